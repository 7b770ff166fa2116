"""The tree's seams, pinned: pure stages import without Milvus, and each heavy library has one home."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.fakes import FakeCatalog, fake_track
from tests.fixtures.audio import synthetic_music
from tunetrace.audio.windows import WindowSpec, frame
from tunetrace.config import parse_config
from tunetrace.encoders.spectral import SpectralEncoder
from tunetrace.ringbuffer import WindowBatch
from tunetrace.voting import HorizonVoter, horizon_params

PACKAGE = Path(__file__).resolve().parents[1] / "daemon" / "tunetrace"

HOMES = {
    "pymilvus": "store/",
    "grpc": "store/",
    "milvus_lite": "store/",
    "aiomqtt": "publish/mqtt.py",
    "sounddevice": "sources/soundcard.py",
    "onnxruntime": "encoders/",
    "psycopg": "history/postgres.py",
    "mutagen": "catalog/tags.py",
    "prometheus_client": "observe/metrics.py",
    "aiohttp": "observe/http.py",
    "av": "audio/decode.py",
    "threadpoolctl": "store/resident.py",
}
"""Each external library and the only place in the package allowed to import it."""


def _imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_each_external_library_is_imported_only_in_its_home() -> None:
    strays = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        for library in _imported_roots(path) & HOMES.keys():
            if not relative.startswith(HOMES[library]):
                strays.append(f"{relative} imports {library} (its home is {HOMES[library]})")
    assert strays == []


def test_importing_voting_loads_no_milvus_client() -> None:
    probe = (
        "import sys, tunetrace.voting, tunetrace.pipeline, tunetrace.identify; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pymilvus', 'grpc', 'milvus_lite')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60,
    )
    assert loaded.stdout.strip() == "[]"


def test_the_horizon_voter_finds_a_track_and_its_position_in_a_fake_catalog() -> None:
    encoder = SpectralEncoder()
    info = encoder.info
    rate = info.sample_rate
    catalog = FakeCatalog()
    for track_id, seed in ((11, 1), (22, 2)):
        audio = synthetic_music(40.0, rate, seed=seed)
        windows, starts = frame(audio, WindowSpec(rate, info.window_s, info.hop_s))
        track = fake_track(track_id, f"t{track_id}", len(starts), 40.0)
        catalog.add_track(track, encoder.embed(windows), starts / rate)
    config = parse_config({})
    voter = HorizonVoter(encoder, catalog, catalog.shape, horizon_params(
        encoder, config.matcher, config.tracker, silence_threshold_dbfs=-60.0,
    ))
    query = synthetic_music(40.0, rate, seed=2)[12 * rate : 20 * rate]  # track 22 from 12 s
    windows, starts = frame(query, WindowSpec(rate, info.window_s, config.tracker.window_hop_s))
    observations = voter.process(WindowBatch(windows, starts.astype(np.int64)))

    assert observations, "one decision per decision interval"
    best = observations[-1].candidates[0]
    assert best.track_id == 22
    assert abs(best.alignment_s - 12.0) <= 0.5
    assert catalog.searches >= 1


def test_the_horizon_voter_reports_an_outage_in_stream_order_without_searching_it() -> None:
    encoder = SpectralEncoder()
    info = encoder.info
    rate = info.sample_rate
    catalog = FakeCatalog()
    audio = synthetic_music(40.0, rate, seed=1)
    windows, starts = frame(audio, WindowSpec(rate, info.window_s, info.hop_s))
    catalog.add_track(fake_track(11, "t11", len(starts), 40.0), encoder.embed(windows), starts / rate)
    config = parse_config({})
    voter = HorizonVoter(encoder, catalog, catalog.shape, horizon_params(
        encoder, config.matcher, config.tracker, silence_threshold_dbfs=-60.0,
    ))
    windows, starts = frame(audio[: 10 * rate], WindowSpec(rate, info.window_s, config.tracker.window_hop_s))
    outage = (starts >= 4 * rate) & (starts < 6 * rate)
    windows[outage] = 0.0
    observations = voter.process(WindowBatch(windows, starts.astype(np.int64), outage))

    down = [o.stream_s for o in observations if not o.source_up]
    assert down and all(4.0 + info.window_s <= t <= 6.0 + info.window_s for t in down)
    assert all(not o.candidates for o in observations if not o.source_up)
    up_after = [o for o in observations if o.source_up and o.stream_s > 6.0 + info.window_s]
    assert up_after and up_after[-1].candidates[0].track_id == 11
    assert catalog.searched_vectors == int((~outage).sum()), "outage windows are never searched"
