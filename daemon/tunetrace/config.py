"""One typed configuration, loaded from YAML with errors that name the key and the fix.

Each stage receives only its own frozen section (``EncoderConfig``, ``MilvusConfig`` ...), never the
root, so a reader can see exactly what a stage depends on.  Strings may reference environment
variables as ``${NAME}`` (or ``${NAME:-default}``) so that secrets stay out of the file (and
systemd credentials can be passed through ``LoadCredential=`` plus an environment file); resolved
secrets are ``SecretStr`` and never appear in logs or ``repr``.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from tunetrace.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_CONFIG_PATHS = (Path("/etc/tunetrace/tunetrace.yaml"),)
ENV_CONFIG = "TUNETRACE_CONFIG"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
"""``${NAME}`` (required) or ``${NAME:-default}`` (the default when unset or empty, as in a shell)."""


UNIT_STATE_DIR = Path("/var/lib/tunetrace")
"""The shipped unit's ``StateDirectory=tunetrace``: where the daemon's catalog is under systemd."""


def default_data_dir() -> Path:
    """Where catalogs and state live when the config does not say.

    systemd's ``StateDirectory=`` exports ``STATE_DIRECTORY``; otherwise follow XDG. A command run
    from a shell with the daemon's config has no ``STATE_DIRECTORY``: if the unit's catalog exists
    it is warned that it is about to use another catalog (an ingest would land where the daemon
    never looks), with the fix.
    """
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    chosen = base / "tunetrace"
    if chosen != UNIT_STATE_DIR and _readable_catalog(UNIT_STATE_DIR):
        log.warning(
            "the config sets no data_dir, so this uses %s; the systemd unit's catalog is in %s. To "
            "work on the daemon's catalog, set data_dir: %s in the config", chosen, UNIT_STATE_DIR,
            UNIT_STATE_DIR,
        )
    return chosen


def _readable_catalog(data_dir: Path) -> bool:
    try:
        return (data_dir / "catalog.db").exists()
    except OSError:
        return False


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _readable_file(path: Path | None) -> Path | None:
    """A CA bundle is checked when the config is loaded, so ``check-config`` and ``serve`` agree."""
    if path is None:
        return None
    if not path.is_file():
        raise ValueError(f"no such file: {path}; point it at a PEM CA bundle (or remove the key)")
    return path


EncoderName = Literal["fingerprint", "spectral", "vggish"]


class EncoderConfig(_Section):
    name: EncoderName = "fingerprint"
    """Which encoder embeds windows: the neural ``fingerprint`` shipped in the package (trained in
    this repository, docs/models.md), the weight-free ``spectral`` baseline, or ``vggish`` (needs
    the ``vggish`` extra and weights).  A catalog answers only to the encoder that built it."""
    model_path: Path | None = None
    """Override the model file (ONNX for ``fingerprint``; directory holding the VGGish weights)."""
    threads: int = Field(default=1, ge=1, le=64)
    """CPU threads the encoder may use for one batch."""
    batch_size: int = Field(default=64, ge=1, le=4096)
    """Windows embedded per call; larger batches are faster, smaller ones lower latency."""
    vggish_postprocess: bool = True
    """Apply VGGish's PCA whitening + 8-bit quantisation (the published embedding)."""


IndexType = Literal["auto", "FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "DISKANN", "SCANN", "AUTOINDEX"]
IndexParam = int | float | str
LITE_INDEX_TYPES = ("FLAT", "IVF_FLAT", "AUTOINDEX")
"""What the embedded Milvus Lite 2.5 accepts (it rejects HNSW and the quantised indexes)."""


class IndexConfig(_Section):
    """How the vectors collection is indexed: chosen when a catalog is created, recorded in it."""

    type: IndexType = "auto"
    """``auto``: ``FLAT`` (exact) on Milvus Lite, ``HNSW`` on a Milvus server (chosen by
    measurement, docs/scaling.md §2; ``IVF_SQ8`` where memory matters more). The index of an
    existing catalog is the one it was created with; a different ``type`` here is reported."""
    build: dict[str, IndexParam] = Field(default_factory=dict)
    """Index build parameters (``{nlist: 1024}`` for IVF_*, ``{M: 16, efConstruction: 200}`` for
    HNSW); empty: the defaults of ``store.milvus``."""
    search: dict[str, IndexParam] = Field(default_factory=dict)
    """Per-query search parameters (``{ef: 256}`` for HNSW, ``{nprobe: 64}`` for IVF_SQ8); empty:
    the defaults of ``store.milvus``. Applies to existing catalogs too."""
    live_search: dict[str, IndexParam] = Field(default_factory=dict)
    """Search parameters of the daemon's live searches when Milvus answers them (a server, or a
    Lite catalog above ``resident_max_vectors``); empty: ``search`` if set, else the live defaults
    of ``store.milvus`` (HNSW: a smaller ``ef`` than one-shot's, as a station votes over many
    windows and searches two of them every 0.5 s of audio, docs/scaling.md)."""


class MilvusConfig(_Section):
    uri: str | None = None
    """``None``: a Milvus Lite file ``<data_dir>/catalog.db``. ``http(s)://host:19530``: a Milvus server."""
    token: SecretStr | None = None
    """``user:password`` or an API key; use ``${ENV_NAME}`` to read it from the environment."""
    db_name: str = ""
    collection_prefix: str = Field(default="tunetrace", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,40}$")
    """Collections are ``<prefix>_vectors``, ``<prefix>_tracks`` and ``<prefix>_meta``."""
    ca_file: Path | None = None
    """PEM bundle to verify a TLS (``https://``) server."""
    timeout_s: float = Field(default=30.0, gt=0)
    """Per-request timeout; a server that does not answer in time is reported, not waited on forever."""
    index: IndexConfig = Field(default_factory=IndexConfig)
    shards: int = Field(default=1, ge=1, le=64)
    """Shards of the vectors collection on a Milvus server or cluster (set when it is created;
    more shards spread inserts over more data nodes). Milvus Lite has one."""
    resident_max_vectors: int = Field(default=300_000, ge=0)
    """The daemon answers live searches of an embedded (Milvus Lite) catalog up to this many
    vectors from an exact copy in its own memory (4 bytes per dimension per vector: 154 MB at
    300,000 x 128), the same neighbours Lite's exact search finds for a fraction of the CPU; larger
    catalogs, and a server's, are searched by Milvus; the limit is checked again at every catalog
    change while the daemon runs (over it, the copy is freed; back under it, copied again).
    0: always Milvus. ``identify`` always asks Milvus (a copy would slow its start)."""

    _ca_file_exists = field_validator("ca_file")(_readable_file)

    @model_validator(mode="after")
    def _lite_limits(self) -> MilvusConfig:
        if not is_server_uri(self.uri):
            problem = lite_limits_problem(self.index.type, self.shards)
            if problem:
                raise ValueError(problem)
        return self


def is_server_uri(uri: str | None) -> bool:
    """A Milvus server or cluster (``http(s)://``, ``tcp://``, ``grpc://``); otherwise a Lite file."""
    return uri is not None and uri.startswith(("http://", "https://", "tcp://", "grpc://"))


def lite_limits_problem(index_type: str, shards: int) -> str | None:
    """What Milvus Lite cannot do of the asked index and shards, said with the fix; ``None``: fine."""
    if index_type not in ("auto", *LITE_INDEX_TYPES):
        return (
            f"milvus.index.type {index_type} needs a Milvus server (set milvus.uri); "
            f"the embedded Milvus Lite offers {', '.join(LITE_INDEX_TYPES)}"
        )
    if shards != 1:
        return "milvus.shards needs a Milvus server (set milvus.uri); Milvus Lite has one shard"
    return None


CALIBRATED_MIN_CONFIDENCE: dict[str, float] = {
    "spectral": 0.2,
    "fingerprint": 0.2,
    "vggish": 0.2,
}
"""``matcher.min_confidence`` when the config does not set it. Each encoder scores agreement on
its own scale, so one threshold cannot serve all: each value is the lowest that kept hold-out
false positives at or below 0.5% on a calibration run whose music is not in any reported result,
rounded up for margin (spectral: nexuiz, docs/evaluation.md; fingerprint: pingus, docs/models.md:
0.17 for the shipped model, fixed at 0.2; the first model's 0.22 was fixed at 0.25). vggish keeps
the spectral value: its weights are not available here to calibrate it."""


CALIBRATED_MIN_CONFIDENCE_LARGE: dict[str, float] = {
    "spectral": 0.2,
    "fingerprint": 0.18,
    "vggish": 0.2,
}
"""``matcher.min_confidence_large`` when the config does not set it: the no-match threshold of a
catalog of ``large_catalog_vectors`` or more, answered on hits alone. The fingerprint's was
calibrated on 600 pingus hold-out excerpts at 2,000 and 20,000 tracks (docs/scaling.md, "No-match
at size"); the others keep their small-catalog value (not measured at size)."""


CALIBRATED_START_CONFIDENCE: dict[str, float] = {
    "spectral": 0.45,
    "fingerprint": 0.55,
    "vggish": 0.45,
}
"""``tracker.start_confidence`` when the config does not set it: the lowest value that gave no
false play on the calibration streams of ``bench_live`` (docs/benchmarks.md), for the same reason
as above. The fingerprint's chance matches on unknown music under noise reach 0.5 over the
horizon (spectral's stay below 0.45), while its true matches climb past 0.7 within two seconds."""

CALIBRATED_WINDOW_HOP_S: dict[str, float] = {
    "spectral": 0.1,
    "fingerprint": 0.25,
    "vggish": 0.1,
}
"""``tracker.window_hop_s`` when the config does not set it. The spectral encoder only matches a
live window within ~0.05 s of an indexed one, so it needs a fifth of the catalog hop; the
fingerprint was trained with windows shifted by up to half the catalog hop and matches at any
shift, so half the catalog hop suffices: 2.5x fewer windows to embed and search per station with
the same plays on the benchmark streams (docs/benchmarks.md)."""

CALIBRATED_DECISION_INTERVAL_S: dict[str, float] = {
    "spectral": 0.2,
    "fingerprint": 0.5,
    "vggish": 0.2,
}
"""``tracker.decision_interval_s`` when the config does not set it. The fingerprint votes every
0.5 s (every second live window): half the voting of one vote per window; with the then
``start_confirmations`` 2 (decisions 0.5 s apart, as 3 decisions 0.25 s apart had been) the same
plays on the benchmark streams, no false play, no flapping, latency median +0.05 s
(docs/benchmarks.md, "On air at 1% of a core"). Since session 11 one decision starts a play
(``CALIBRATED_START_CONFIRMATIONS``); voting every 0.25 s would start plays another ~0.1 s
sooner for twice the votes (docs/models.md, "Live start latency")."""

CALIBRATED_START_CONFIRMATIONS: dict[str, float] = {
    "spectral": 3,
    "fingerprint": 1,
    "vggish": 3,
}
"""``tracker.start_confirmations`` when the config does not set it. The spectral encoder's chance
matches pass its start threshold now and then, so its plays wait for agreeing decisions spanning
0.4 s. The fingerprint's ``start_confidence`` 0.55 already keeps chance out: on 8 live benchmark
streams (4 h: clean, 10 dB noise and 0 dB talk-over) one decision gave the same plays as two,
0.5 s sooner (latency median clean 2.65-2.69 s against 3.15-3.19 s), with no new flapping and one
more 4 s play of a catalog duplicate (``menu`` inside ``menu_enhanced``) on one noisy stream
(docs/models.md, "Live start latency")."""

CALIBRATED_VERIFY_CANDIDATES: dict[str, float] = {
    "spectral": 0,
    "fingerprint": 3,
    "vggish": 0,
}
"""``matcher.verify_candidates`` when the config does not set it. Verification's similarity floor
(``verify_min_similarity``) and the verified threshold were measured on the fingerprint's scale
only (docs/scaling.md, "Verifying only the unsure queries"); the other encoders answer on hits
alone until they are measured at size."""

CALIBRATED_DEFAULTS: dict[tuple[str, str], dict[str, float]] = {
    ("matcher", "min_confidence"): CALIBRATED_MIN_CONFIDENCE,
    ("matcher", "min_confidence_large"): CALIBRATED_MIN_CONFIDENCE_LARGE,
    ("matcher", "verify_candidates"): CALIBRATED_VERIFY_CANDIDATES,
    ("tracker", "start_confidence"): CALIBRATED_START_CONFIDENCE,
    ("tracker", "window_hop_s"): CALIBRATED_WINDOW_HOP_S,
    ("tracker", "decision_interval_s"): CALIBRATED_DECISION_INTERVAL_S,
    ("tracker", "start_confirmations"): CALIBRATED_START_CONFIRMATIONS,
}
"""Every per-encoder default: (config section, key) -> encoder name -> value."""


DEFAULT_QUERY_HOPS_PER_CATALOG_HOP = 4
"""Query windows per catalog hop when ``matcher.query_hop_s`` is unset (see there)."""


class MatcherConfig(_Section):
    top_k: int = Field(default=10, ge=1, le=200)
    """Nearest catalog windows retrieved per query window."""
    query_hop_s: float | None = Field(default=None, gt=0)
    """Hop between query windows; ``None`` means a quarter of the catalog hop (0.125 s for the
    shipped encoders), so every indexed window has a query window within an eighth of a hop of
    it: the fingerprint's similarity there is still ~0.97 of an aligned window's, and each query
    window costs a search (0.5-1 ms on Milvus Lite's exact index at 29k vectors), which a tenth
    of the hop spent 2.5 times over for the same accuracy (docs/benchmarks.md, "One-shot identify").
    The spectral baseline wants 0.05 (it tolerates less misalignment)."""
    offset_tolerance_s: float = Field(default=0.3, ge=0)
    """Hits whose catalog-minus-query offsets differ by at most this much vote together."""
    min_similarity: float = -1.0
    """Hits less similar than this never vote (inner product of unit vectors, in [-1, 1])."""
    min_confidence: float = Field(default=0.2, ge=0, le=1)
    """Answers below this confidence are reported as "no match".  Confidence is the winner's
    time-consistent evidence in excess of the best other track's; 0.2 was calibrated on hold-out
    music (no false positive in 150 excerpts of 3-10 s) before the reported evaluation."""
    min_confidence_large: float = Field(default=0.2, ge=0, le=1)
    """``min_confidence`` in a catalog of at least ``large_catalog_vectors`` (answers on hits
    alone; verified answers keep ``min_confidence``). As a catalog grows the runner-up comes
    closer to a chance winner and every margin shrinks, the hold-out's with the true matches':
    the highest hold-out confidence fell from 0.25 at 30 tracks to 0.15-0.20 at 2,000 and
    0.13-0.15 at 20,000, so the small catalog's threshold refused true matches that no false one
    reaches (docs/scaling.md, "One threshold per catalog size"). Unset: calibrated per encoder,
    but never above an explicitly set ``min_confidence``."""
    large_catalog_vectors: int = Field(default=500_000, ge=0)
    """From this many vectors (~1,200 tracks) ``min_confidence_large`` applies."""
    min_aligned_windows: int = Field(default=3, ge=1)
    """A match needs at least this many query windows agreeing in time."""
    verify_candidates: int = Field(default=3, ge=0, le=8)
    """One-shot answers: the leading candidates of the vote scored again on every catalog window
    their alignment implies (``voting.verify``), so that a true match's evidence does not shrink
    as the catalog grows; ``0`` votes on hits alone. Only in a catalog of ``verify_from_vectors``
    and only for the queries ``verify_queries`` selects; unset, calibrated per encoder
    (``CALIBRATED_VERIFY_CANDIDATES``: 3 for the fingerprint, 0 for the others). At 20,000 tracks
    (docs/scaling.md, "Verifying only the unsure queries") 3 candidates of the unsure queries
    found 132 of 200 excerpts under interfering music against 120 on hits alone, with no hold-out
    false positive in 1,139, for 61 / 97 ms per 5 s identify (median / p95; hits alone 59 / 71
    ms); 6 candidates found one excerpt fewer on each 600-excerpt plan at 63 / 122 ms."""
    verify_queries: Literal["unsure", "all"] = "unsure"
    """Which queries verification re-scores (when ``verify_candidates`` is on): ``unsure``, only
    those hits alone leave unanswered although their best candidate has ``min_aligned_windows``
    windows agreeing in time: the queries an approximate index can lose, where a broader search
    would cost every query more. A query answered on hits alone keeps that answer and costs no
    catalog read, and chance candidates (fewer aligned windows) none either. ``all``: every
    query, every answer then judged by ``min_confidence`` (sessions 8-9: ~45 ms more on each
    identify, and the answers on hits alone between the two thresholds are refused)."""
    verify_min_similarity: float = Field(default=0.4, ge=-1, le=1)
    """A query window confirms its aligned catalog window in verification from this similarity."""
    verify_from_vectors: int = Field(default=500_000, ge=0)
    """Verification runs only in catalogs of at least this many vectors (~1,200 tracks). In a small
    catalog the top-k already holds a true match's windows, and verifying the rivals too only
    narrows the winner's margin (measured at 30 tracks: 3 s hit rate 80.5 -> 68.6 %, 5 s and 10 s
    about even; at 2,000 tracks it gained 3-6 of 60 excerpts under interfering music:
    docs/scaling.md, "Verification")."""
    speed_ratios: tuple[float, ...] = (1.0,)
    """Playback speeds to try (1.03 = played 3% fast); the best time-consistent match wins."""
    max_query_s: float = Field(default=60.0, gt=0, le=600)
    """``identify`` reads at most this much of each file (from its start): a query is a snippet,
    and memory and time then stay bounded whatever the file's length (a 1-hour file costs what a
    60 s one does). Raise it for long, noisy recordings; voting's memory grows with it (peak RSS
    of ``identify`` measured at ~265 MB for 60 s, ~1 GB for 300 s), hence the 600 s ceiling."""
    silence_threshold_dbfs: float = Field(default=-55.0, le=0)
    """Query windows quieter than this are not searched (silence is not music); a query with no
    louder window is answered "no match: silent"."""

    def query_hop(self, catalog_hop_s: float) -> float:
        """The hop between query windows for a catalog indexed every ``catalog_hop_s``."""
        return self.query_hop_s or catalog_hop_s / DEFAULT_QUERY_HOPS_PER_CATALOG_HOP

    @model_validator(mode="after")
    def _speeds_positive(self) -> MatcherConfig:
        if not self.speed_ratios or any(not 0.5 < r < 2.0 for r in self.speed_ratios):
            raise ValueError("speed_ratios must be a non-empty list of ratios between 0.5 and 2.0")
        return self


class IngestConfig(_Section):
    extensions: tuple[str, ...] = (
        ".wav", ".mp3", ".ogg", ".oga", ".opus", ".flac", ".m4a", ".aac", ".wma", ".aiff", ".aif",
    )
    """File suffixes scanned in folders (files named explicitly are always tried)."""
    metadata_csv: Path | None = None
    """Optional sidecar CSV with columns ``path,title,artist,album`` overriding file tags."""
    insert_batch: int = Field(default=5000, ge=1, le=10000)
    """Rows per Milvus insert (Milvus Lite misbehaves above ~10k)."""
    workers: int = Field(default=0, ge=0, le=64)
    """Worker processes that hash, decode and embed files while the ingesting process writes
    tracks; ``0``: one per CPU core. ``1`` runs everything in one process. ``tunetrace ingest``
    uses them; the daemon ingests in its own process, beside its stations."""
    watch_folder: Path | None = None
    """The daemon ingests audio files that appear (or change) in this folder, recursively, once
    they have stopped changing for one ``watch_interval_s`` (a copy in progress is not ingested
    half-way). Files removed from the folder stay in the catalog (``tunetrace catalog remove``)."""
    watch_interval_s: float = Field(default=10.0, gt=0)
    """How often the watched folder is scanned."""
    min_duration_s: float = Field(default=2.0, ge=0)
    """Shorter files are refused (reported as failed): a jingle-length blip matches by chance and
    cannot anchor a time-consistent vote. ``0`` accepts anything at least one window long."""
    silence_threshold_dbfs: float = Field(default=-55.0, le=0)
    """Windows quieter than this are not indexed (silence is not the recording: an indexed silent
    stretch would "match" every silent query); a file with no louder window is refused."""
    follow_symlinks_out: bool = False
    """Inside an ingested folder, follow symbolic links that lead out of it. Off: such a link is
    reported and skipped (a planted link must not make ingest read files elsewhere)."""


# -- live daemon ----------------------------------------------------------------------------------


class SourceConfig(_Section):
    kind: Literal["ffmpeg", "soundcard"] = "ffmpeg"
    """``ffmpeg``: a URL or file ffmpeg reads (Icecast/Shoutcast, HLS ``.m3u8``, RTSP, a file);
    ``soundcard``: a capture device through sounddevice/PortAudio."""
    url: str | None = None
    """What ffmpeg opens (required for ``kind: ffmpeg``)."""
    device: str | int | None = None
    """Sound card name (substring) or index; ``None`` is the system default input."""
    capture_rate_hz: int | None = Field(default=None, ge=8000, le=192000)
    """Rate to open the sound card at (``None``: the device default); audio is resampled after."""
    channels: int = Field(default=1, ge=1, le=32)
    realtime: bool = True
    """For files: pace at real time (``False`` reads as fast as possible, for tests and backfills)."""
    loop: bool = False
    """For files: start again at the end."""
    reconnect_initial_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    stall_timeout_s: float = Field(default=15.0, gt=0)
    """No audio for this long means the source is down (and is restarted)."""
    silence_threshold_dbfs: float = Field(default=-55.0, le=0)
    silence_after_s: float = Field(default=5.0, gt=0)
    """Audio below the threshold for this long is reported as silence."""

    @model_validator(mode="after")
    def _url_for_ffmpeg(self) -> SourceConfig:
        if self.kind == "ffmpeg" and not self.url:
            raise ValueError("source.url is required for kind: ffmpeg (a stream URL or file path)")
        return self


class EvidenceConfig(_Section):
    """Keep the audio around each play start, compressed, so a disputed play can be listened to."""

    before_s: float = Field(default=2.0, ge=0, le=30)
    """Audio kept before the play's start on air."""
    after_s: float = Field(default=8.0, gt=0, le=60)
    """Audio kept after it (the recording itself)."""
    retention_days: float = Field(default=90.0, gt=0)
    """Clips older than this are deleted."""
    bitrate_kbps: int = Field(default=24, ge=6, le=256)
    """Opus bitrate: 24 kbit/s mono is 30-50 KB per 10 s clip (VBR) and plainly recognisable music."""
    folder: Path | None = None
    """Where clips go (``None``: ``<data_dir>/evidence``); one sub-folder per station and day."""


class StationConfig(_Section):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    """Slug used in MQTT topics and the play log (lowercase letters, digits, ``-`` and ``_``)."""
    display_name: str | None = None
    source: SourceConfig
    evidence: EvidenceConfig | None = None
    """``None``: no evidence kept for this station."""


class TrackerConfig(_Section):
    window_hop_s: float = Field(default=0.1, gt=0)
    """Hop between live windows embedded per station. Live windows fall anywhere between the
    catalog's; unset in a config file, it is calibrated per encoder (``CALIBRATED_WINDOW_HOP_S``)."""
    decision_interval_s: float = Field(default=0.2, gt=0, le=2.0)
    """Stream time between two votes over the horizon (rounded to whole live windows, at least
    one): voting costs more than a window's embedding, and ``start_confirmations`` counts these
    decisions. Unset in a config file, it is calibrated per encoder
    (``CALIBRATED_DECISION_INTERVAL_S``)."""
    horizon_s: float = Field(default=4.0, gt=0)
    """Sliding horizon of hits the voting looks at; short enough that a new track dominates it
    within ~2 s (latency), long enough to hold several time-consistent windows."""
    start_confidence: float = Field(default=0.45, ge=0, le=1)
    """Confidence over the horizon needed to start (or switch to) a play; unset in a config file, it
    is calibrated per encoder (``CALIBRATED_START_CONFIDENCE``)."""
    keep_confidence: float = Field(default=0.2, ge=0, le=1)
    """Lower confidence that still counts as evidence for the current play (hysteresis)."""
    min_aligned_windows: int = Field(default=4, ge=1)
    """Distinct catalog windows that must agree in time before a play can start."""
    start_confirmations: int = Field(default=3, ge=1)
    """Consecutive decisions that must agree before a play starts (no flapping); unset in a config
    file, it is calibrated per encoder (``CALIBRATED_START_CONFIRMATIONS``)."""
    end_after_s: float = Field(default=8.0, gt=0)
    """A play ends when its evidence has been gone this long."""
    position_jump_s: float = Field(default=3.0, gt=0)
    """A position off the clock-advanced one by more than this is a new play."""
    switch_margin: float = Field(default=0.2, ge=0, le=1)
    """While the playing track still has evidence, another must beat its confidence by this much to
    take over; a duplicate recording in the catalog (album and single version, remaster) would
    otherwise make the play flap between the two."""
    continue_within_s: float = Field(default=30.0, ge=0)
    """An outage (source down, daemon restart or crash) up to this long does not split a play: the
    same recording heard again at the position the clock predicts continues it (same ``play_id``).
    ``0`` ends a play at every outage."""
    shared_audio: bool = True
    """Find the catalog's recordings that share audio (``tunetrace catalog overlaps``: remasters,
    edits, one recording ingested twice) in the background, and keep a play through its shared
    stretch whichever of the copies matches (``tracker.SharedSpan``). Cached in ``data_dir``: a
    restart only searches tracks added since."""
    search_interval_s: float = Field(default=0.5, ge=0)
    """A live station searches the catalog once per this much new audio (all its new windows in
    one request). A Milvus Lite search costs tens of ms of CPU whatever its size, so this is what
    decides the CPU per station; decisions are still made per window, at most this much later."""


class MqttConfig(_Section):
    host: str = "localhost"
    port: int = Field(default=1883, ge=1, le=65535)
    username: str | None = None
    password: SecretStr | None = None
    """Use ``${ENV_NAME}`` to keep it out of the file."""
    tls: bool = False
    ca_file: Path | None = None
    """CA bundle for TLS (``None``: the system trust store)."""
    client_id: str | None = None
    topic_prefix: str = Field(default="tunetrace", pattern=r"^[^#+]+$")
    keepalive_s: int = Field(default=30, ge=5)
    reconnect_initial_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    outbox_max_events: int = Field(default=10000, ge=10)
    """Events waiting for the broker (persisted on disk); beyond this the oldest are dropped and counted."""
    discovery: bool = True
    """Publish Home Assistant MQTT discovery so stations appear as devices."""
    discovery_prefix: str = "homeassistant"

    _ca_file_exists = field_validator("ca_file")(_readable_file)


class PlayLogConfig(_Section):
    path: Path | None = None
    """JSON Lines play log (``None``: ``<data_dir>/plays.jsonl``)."""
    max_bytes: int = Field(default=10_000_000, ge=10_000)
    backups: int = Field(default=5, ge=0)


class HistoryConfig(_Section):
    url: SecretStr | None = None
    """Where the play history lives. ``None``: an SQLite file ``<data_dir>/history.sqlite3``;
    ``sqlite:///absolute/path.sqlite3``: another SQLite file; ``postgresql://user@host:5432/db``:
    a PostgreSQL database that a fleet of daemons shares (write the password as ``${ENV_NAME}``)."""
    retention_days: int | None = Field(default=None, ge=1)
    """Plays and station intervals that ended more than this many days ago are deleted (each deletion
    is logged with its count). ``None``: keep everything."""
    checkpoint_interval_s: float = Field(default=1.0, gt=0, le=60)
    """How often each station records its up/down state and its open play's last evidence: what a
    crash can lose (the open play is closed at its last checkpointed evidence)."""

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            url = value.get_secret_value()
            if not url.startswith(("sqlite:///", "postgresql://", "postgres://")):
                scheme = url.split("://", 1)[0] if "://" in url else "scheme-less"
                raise ValueError(
                    f"must start with sqlite:/// or postgresql:// (got a {scheme!r} URL); "
                    "leave it unset for <data_dir>/history.sqlite3"
                )
        return value


class ServiceConfig(_Section):
    shutdown_timeout_s: float = Field(default=5.0, gt=0)
    health_interval_s: float = Field(default=30.0, gt=0)
    """How often per-station health is published."""
    max_pending_windows: int = Field(default=64, ge=1)
    """Windows queued per station before the oldest are skipped (counted as drops)."""
    catalog_refresh_s: float = Field(default=60.0, gt=0)
    """How often the daemon re-reads the catalog's tracks, so that tracks another process ingests
    into a shared Milvus server (or removes) are recognised (or no longer) without a restart.
    Changes made through the daemon (``tunetrace ingest``/``catalog remove`` with its config) apply
    at once."""

    catalog_outage_watchdog_s: float = Field(default=300.0, gt=0)
    """How long failing catalog searches still feed systemd's watchdog. Milvus Lite's server
    process is restarted in place when it dies, and a Milvus server restarting comes back by
    itself; an outage longer than this stops the pings, so systemd restarts the daemon."""
    batch_gather_s: float = Field(default=0.1, ge=0, le=2.0)
    """How long one station's due windows wait for other stations' before all are embedded and
    searched together (one encoder call and one catalog request per tick instead of one per
    station): more stations per core for up to this much later decisions on the wall clock."""


_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


class HttpConfig(_Section):
    """The HTTP server (metrics, API, status page, health); absent from the config = no server."""

    listen: str = "127.0.0.1:8080"
    """``host:port`` to bind (``[::1]:8080`` for IPv6). Loopback by default: anything wider needs
    ``token`` (or a proxy in front), since the API shows what every station plays."""
    token: SecretStr | None = None
    """Bearer token required on every path but ``/healthz``; use ``${ENV_NAME}`` to keep it out of
    the file. The status page takes it once as ``?access_token=`` and sends it as a header."""
    progress_timeout_s: float = Field(default=60.0, gt=0)
    """``/healthz`` fails when an enabled station made no progress for this long."""
    recent_plays: int = Field(default=20, ge=1, le=1000)
    """Plays per station kept in memory for ``/api/stations`` and the status page."""

    @property
    def host(self) -> str:
        return _split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return _split_listen(self.listen)[1]

    @property
    def loopback(self) -> bool:
        return self.host in _LOOPBACK_HOSTS or self.host.startswith("127.")

    @model_validator(mode="after")
    def _valid_listen(self) -> HttpConfig:
        _split_listen(self.listen)
        return self


def _split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8080"`` -> ``("127.0.0.1", 8080)``; ``"[::1]:8080"`` -> ``("::1", 8080)``."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", listen)
    port = int(match.group(2) or match.group(4)) if match else 0
    if match is None or not 1 <= port <= 65535:
        raise ValueError(
            f"listen must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080 (got {listen!r})"
        )
    return match.group(1) or match.group(3), port


class Config(_Section):
    data_dir: Path = Field(default_factory=default_data_dir)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"
    """``json``: one JSON object per line (for Loki, Elasticsearch...); under journald, ``text``
    lines carry the journal's priority prefixes."""
    http: HttpConfig | None = None
    """``None``: no HTTP server (no metrics, API, status page or health endpoint)."""
    encoder: EncoderConfig = EncoderConfig()
    milvus: MilvusConfig = MilvusConfig()
    matcher: MatcherConfig = MatcherConfig()
    ingest: IngestConfig = IngestConfig()
    stations: tuple[StationConfig, ...] = ()
    tracker: TrackerConfig = TrackerConfig()
    mqtt: MqttConfig | None = None
    """``None``: no MQTT; plays still go to the play log."""
    playlog: PlayLogConfig = PlayLogConfig()
    history: HistoryConfig = HistoryConfig()
    service: ServiceConfig = ServiceConfig()

    @model_validator(mode="before")
    @classmethod
    def _encoder_calibrated_defaults(cls, data: Any) -> Any:
        """Fill each per-encoder calibrated setting from the configured encoder unless it is set."""
        if not isinstance(data, dict):
            return data
        encoder = data.get("encoder")
        name = encoder.get("name") if isinstance(encoder, dict) else getattr(encoder, "name", None)
        matcher = data.get("matcher")
        explicit_min_confidence = matcher.get("min_confidence") if isinstance(matcher, dict) else None
        for (section, key), calibrated in CALIBRATED_DEFAULTS.items():
            values = data.get(section)
            if values is None:
                values = {}
            value = calibrated.get(name or EncoderConfig().name)
            if key == "min_confidence_large" and isinstance(explicit_min_confidence, int | float):
                # A threshold chosen for small catalogs bounds the large one: never stricter than it.
                value = None if value is None else min(value, float(explicit_min_confidence))
            # Not a mapping, already set, or an unknown encoder: their own validation speaks.
            if isinstance(values, dict) and key not in values and value is not None:
                data = {**data, section: {**values, key: value}}
        return data

    @model_validator(mode="after")
    def _unique_stations(self) -> Config:
        counts = Counter(s.name for s in self.stations)  # linear: 75k stations check in milliseconds
        duplicates = sorted(n for n, c in counts.items() if c > 1)
        if duplicates:
            raise ValueError(f"stations: names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def history_url(self) -> str:
        """The history's URL (a secret: may hold a password); SQLite in the data dir by default."""
        if self.history.url is not None:
            return self.history.url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'history.sqlite3'}"

    def milvus_uri(self) -> str:
        return self.milvus.uri or str(self.data_dir / "catalog.db")


def data_dir_problem(path: Path) -> str | None:
    """Why this process could not keep its state in ``path`` (``None``: it can).

    Checked by ``check-config`` and before ``serve`` opens anything, so that an unwritable data
    dir is a configuration error (exit 78, no restart loop), not a traceback at the first write.
    """
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"data_dir: {existing} is not a folder; set data_dir to a folder"
    if not os.access(existing, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        what = "is" if existing == path else f"does not exist and its parent {existing} is"
        return (
            f"data_dir: {path} {what} not writable by this user (uid {os.geteuid()}); create it and "
            "give it to the user that runs tunetrace (systemd: StateDirectory=), or set data_dir"
        )
    return None


def with_encoder(config: Config, name: EncoderName) -> Config:
    """``config`` with another encoder; a setting left at the old encoder's calibrated default
    follows to the new encoder's (an explicitly different one is kept)."""
    update: dict[str, Any] = {"encoder": config.encoder.model_copy(update={"name": name})}
    for (section, key), calibrated in CALIBRATED_DEFAULTS.items():
        values = update.get(section, getattr(config, section))
        if getattr(values, key) == calibrated.get(config.encoder.name):
            update[section] = values.model_copy(update={key: calibrated[name]})
    return config.model_copy(update=update)


_SAFE_LOADER: type[yaml.SafeLoader] | type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's safe loader where PyYAML was built with it: 2.5x faster on a 75k-station file."""

MAX_CONFIG_VALUES = 1_000_000
"""Values (mappings, lists, scalars) a config may expand to. YAML aliases share one parsed object,
but every consumer walks them as copies: nine levels of nine aliases (a "billion laughs" file of
a few hundred bytes) would grow past gigabytes. A real config, even with 75k stations, stays far
below."""

MAX_CONFIG_BYTES = 64 * 1024 * 1024
"""A config file larger than this is refused before it is parsed."""


class _Budget:
    def __init__(self, limit: int, source: str) -> None:
        self.left = limit
        self.source = source

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise ConfigError(
                f"{self.source}: the configuration expands to more than {MAX_CONFIG_VALUES:,} values "
                "(YAML aliases nested inside each other?); write the values out"
            )


def _expand_env(value: Any, path: str, budget: _Budget | None = None) -> Any:
    budget = budget or _Budget(MAX_CONFIG_VALUES, "<config>")
    budget.spend()
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k), budget) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]", budget) for i, v in enumerate(value)]
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if default is not None:
                return os.environ.get(name) or default
            if name not in os.environ:
                raise ConfigError(
                    f"{path}: refers to environment variable ${{{name}}}, which is not set; "
                    f"export {name} (or set it in the systemd unit's Environment=/EnvironmentFile=)"
                )
            return os.environ[name]

        return _ENV_REF.sub(substitute, value)
    return value


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The model inside ``X``, ``X | None`` or ``tuple[X, ...]``: where to look up valid keys."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in get_args(annotation):
        found = _section_model(argument)
        if found is not None:
            return found
    return None


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    location = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        section: Any = model
        for part in error["loc"][:-1]:
            if isinstance(part, int):  # an index into a list of sections (stations.0.source)
                continue
            fields = getattr(section, "model_fields", {})
            section = _section_model(fields[part].annotation) if part in fields else None
        valid = sorted(getattr(section, "model_fields", {}))
        hint = f"; valid keys here: {', '.join(valid)}" if valid else ""
        return f"{location}: unknown key{hint}"
    given = error.get("input")
    secret = "token" in location or "password" in location or location.startswith("history.url")
    shown = "" if isinstance(given, dict) or secret else f" (got {given!r})"
    return f"{location}: {error['msg']}{shown}"


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate already-parsed YAML; every problem is listed with its key path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys, not {type(data).__name__}")
    try:
        return Config.model_validate(_expand_env(data, "", _Budget(MAX_CONFIG_VALUES, source)))
    except ValidationError as exc:
        problems = [_describe(dict(e), Config) for e in exc.errors()]
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(problems)) from None


def load_config(path: Path | None = None) -> Config:
    """Load ``path``, else ``$TUNETRACE_CONFIG``, else ``/etc/tunetrace/tunetrace.yaml``, else defaults."""
    if path is None:
        env_path = os.environ.get(ENV_CONFIG)
        found = next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)
        path = Path(env_path) if env_path else found
    if path is None:
        return Config()
    try:
        oversized = path.stat().st_size > MAX_CONFIG_BYTES
        text = "" if oversized else path.read_text(encoding="utf-8")
    except PermissionError:
        raise ConfigError(
            f"{path}: cannot read the config file: permission denied for uid {os.geteuid()}; make it "
            "readable by the user tunetrace runs as (systemd's dynamic user: chmod 0644, secrets as "
            "${NAME} in /etc/tunetrace/secrets.env)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not a text file (invalid UTF-8 at byte {exc.start}); give the YAML config file"
        ) from None
    if oversized:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 2**20} MiB; is this the config file?")
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader, C or Python
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a configuration") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(path))
