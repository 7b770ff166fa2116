from tunetrace.cli import main

raise SystemExit(main())
