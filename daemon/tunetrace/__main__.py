from tunetrace.cli.main import main

raise SystemExit(main())
