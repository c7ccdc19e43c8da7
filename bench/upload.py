"""Benchmark model uploads through the real server; writes bench/reports/upload.md.

    python bench/upload.py [--size-mib 256,1024] [--runs 3] [--server-env NAME=VALUE]

What it does, per size (fresh gunicorn each time, same data dir):
* builds a valid upload without holding it in memory: a zipped Hugging Face folder
  (config.json, vocab.txt, tokenizer_config.json, and a model.safetensors holding one
  F32 tensor whose bytes are streamed into a ZIP_STORED member), checked with
  `compression.pipeline.formats.sniff_upload`;
* starts the server as production does: `manage.py migrate`, an operator user and
  API token from the management commands, then gunicorn (gthread, 1 worker, 4 threads)
  on the embedded default (SQLite, local artifact files, filesystem broker; no Celery
  worker, so the inspection job stays queued);
* streams a multipart POST to /api/v1/models with http.client (1 MiB sends, precomputed
  Content-Length), timing request start to response;
* samples VmRSS of every gunicorn process every 20 ms during the upload, and reads the
  worker's VmHWM after resetting it (/proc/PID/clear_refs) right before the upload;
* interleaves each upload with a dd-like copy of the same bytes (1 MiB blocks) as a
  floor, once to the page cache and once followed by fdatasync.
Each run's bytes differ (a one-line member is appended to the zip), so every upload is
stored in full; versions cannot be deleted between runs while their inspection job is
queued (409), so they are left and the whole data dir is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from _server import Gunicorn, free_port  # noqa: E402  (bench/ is sys.path[0])

from compression.pipeline.archive import ArchiveLimits, extract_zip  # noqa: E402
from compression.pipeline.formats import sniff_upload  # noqa: E402
from compression.pipeline.inspect import inspect_model  # noqa: E402

MIB = 1 << 20
CHUNK = MIB
HIDDEN = 1024  # bert-large width: the tensor is [vocab, 1024] float32
REPORT = ROOT / "bench" / "reports" / "upload.md"
BIN = Path(sys.executable).parent
SAMPLE_S = 0.020


# --------------------------------------------------------------------- the upload file


def _config(vocab: int) -> dict[str, Any]:
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": HIDDEN,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4 * HIDDEN,
        "vocab_size": vocab,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "torch_dtype": "float32",
    }


def _safetensors_head(rows: int) -> bytes:
    nbytes = rows * HIDDEN * 4
    header = {
        "__metadata__": {"format": "pt"},
        "bert.embeddings.word_embeddings.weight": {
            "dtype": "F32",
            "shape": [rows, HIDDEN],
            "data_offsets": [0, nbytes],
        },
    }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes
    return len(raw).to_bytes(8, "little") + raw


def make_hf_zip(path: Path, tensor_bytes: int) -> None:
    """Write a zipped HF folder whose safetensors tensor holds `tensor_bytes` bytes.

    The tensor bytes are streamed in 1 MiB blocks into a stored (uncompressed)
    member, so neither this process nor the server's zip-bomb ratio check sees
    anything unusual; memory use stays at one block.
    """
    rows = max(1, tensor_bytes // (HIDDEN * 4))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "model", "edge"]
    block = os.urandom(CHUNK)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("bert-bench/config.json", json.dumps(_config(rows), indent=2))
        zf.writestr("bert-bench/vocab.txt", "\n".join(vocab) + "\n")
        zf.writestr(
            "bert-bench/tokenizer_config.json",
            json.dumps({"tokenizer_class": "BertTokenizer", "do_lower_case": True}),
        )
        info = zipfile.ZipInfo("bert-bench/model.safetensors", date_time=(2026, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o100644 << 16
        remaining = rows * HIDDEN * 4
        with zf.open(info, "w", force_zip64=remaining > 1900 * MIB) as member:
            member.write(_safetensors_head(rows))
            while remaining:
                n = min(remaining, CHUNK)
                member.write(block if n == CHUNK else block[:n])
                remaining -= n


def add_nonce(path: Path, run: str) -> None:
    """Append a tiny member so this run's bytes (and sha256) are new."""
    with zipfile.ZipFile(path, "a", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"bert-bench/bench-run-{run}.txt", f"{run}\n")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def sanity_check_generator(work: Path) -> dict[str, Any]:
    """Build a small file with the same generator and run the real inspection on it."""
    small = work / "small.zip"
    make_hf_zip(small, 2 * MIB)
    assert sniff_upload(small, "bert-bench.zip", ArchiveLimits()) == "hf-dir"
    out = work / "small-extract"
    extract_zip(small, out, ArchiveLimits())
    result = inspect_model(out, "hf-dir")
    shutil.rmtree(out)
    return result


# --------------------------------------------------------------------------- the server


@dataclass
class Server(Gunicorn):
    """One gthread worker with four threads, as a small deployment runs uploads."""

    token: str = ""

    def setup(self) -> None:
        self.manage("migrate", "--no-input", "-v", "0")
        self.manage("create_user", "bench", "--role", "operator", "--password", secrets.token_hex())
        self.token = self.manage("create_api_token", "bench", "--name", "upload-bench")
        assert self.token.startswith("tf_"), "create_api_token printed no token"

    def start(self, workers: int | None = None, timeout_s: float = 60) -> None:
        self.port = free_port()
        super().start(workers, timeout_s)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        return self.request_json(method, path, body, token=self.token, timeout=30)

    def upload(self, path: Path, name: str, task: str = "text-embedding") -> tuple[int, Any]:
        """Stream a multipart POST of `path`; the file is never read into memory whole."""
        boundary = "tinyfleet-bench-" + secrets.token_hex(8)
        head = b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
            for k, v in (("name", name), ("task", task))
        )
        head += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{path.name}"\r\nContent-Type: application/zip\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        length = len(head) + path.stat().st_size + len(tail)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=900)
        try:
            conn.putrequest("POST", "/api/v1/models")
            conn.putheader("Authorization", f"Bearer {self.token}")
            conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
            conn.putheader("Content-Length", str(length))
            conn.endheaders()
            conn.send(head)
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            with path.open("rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    conn.send(view[:n])
            conn.send(tail)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        return resp.status, json.loads(raw) if raw else None


# ------------------------------------------------------------------------- measurement


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cpu_and_faults(pid: int) -> tuple[float, float, int]:
    """User seconds, system seconds and minor page faults of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])


def reset_hwm(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssSampler(threading.Thread):
    """VmRSS of the gunicorn master and its workers every 20 ms; keeps the maximum."""

    def __init__(self, server: Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak: dict[int, int] = {}
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        assert self.server.proc is not None
        while not self._stop_event.is_set():
            for pid in [self.server.proc.pid, *self.server.worker_pids()]:
                kib = _status_kib(pid, "VmRSS:")
                if kib is not None:
                    self.peak[pid] = max(self.peak.get(pid, 0), kib)
            self.samples += 1
            self._stop_event.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def disk_floor(src: Path, dst: Path, durable: bool) -> float:
    """dd-like copy of src to dst in 1 MiB blocks (+ fdatasync); returns seconds."""
    os.sync()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    start = time.perf_counter()
    with src.open("rb", buffering=0) as fin, dst.open("wb", buffering=0) as fout:
        while n := fin.readinto(buf):
            fout.write(view[:n])
        if durable:
            os.fdatasync(fout.fileno())
    elapsed = time.perf_counter() - start
    dst.unlink()
    return elapsed


@dataclass
class Run:
    seconds: float
    size: int
    baseline_kib: int
    peak_worker_kib: int
    peak_master_kib: int
    hwm_kib: int | None
    samples: int
    cpu_user: float
    cpu_sys: float
    minor_faults: int


@dataclass
class SizeResult:
    mib: int
    size: int
    runs: list[Run] = field(default_factory=list)
    floor_cache: list[float] = field(default_factory=list)
    floor_sync: list[float] = field(default_factory=list)
    idle_kib: int = 0
    end_hwm_kib: int = 0
    end_rss_kib: int = 0
    client_hwm_kib: int = 0
    delete_answer: tuple[int, Any] = (0, None)


def one_upload(server: Server, path: Path, name: str) -> Run:
    """Time one streamed upload and watch the gunicorn processes' memory."""
    (worker,) = server.worker_pids()
    os.sync()  # untimed: the previous run's dirty pages must not slow this one down
    time.sleep(0.5)
    baseline = _status_kib(worker, "VmRSS:") or 0
    reset = reset_hwm(worker)
    user0, sys0, faults0 = cpu_and_faults(worker)
    sampler = RssSampler(server)
    sampler.start()
    start = time.perf_counter()
    status, body = server.upload(path, name)
    elapsed = time.perf_counter() - start
    sampler.stop()
    user1, sys1, faults1 = cpu_and_faults(worker)
    hwm = _status_kib(worker, "VmHWM:") if reset else None
    if status != 201:
        raise RuntimeError(f"upload of {path.stat().st_size} bytes answered {status}: {body}")
    check_stored(server, path, body)
    assert server.proc is not None
    return Run(
        seconds=elapsed,
        size=path.stat().st_size,
        baseline_kib=baseline,
        peak_worker_kib=sampler.peak.get(worker, 0),
        peak_master_kib=sampler.peak.get(server.proc.pid, 0),
        hwm_kib=hwm,
        samples=sampler.samples,
        cpu_user=user1 - user0,
        cpu_sys=sys1 - sys0,
        minor_faults=faults1 - faults0,
    )


def check_stored(server: Server, path: Path, body: dict[str, Any]) -> None:
    """The server stored exactly these bytes once and left no temporary file behind."""
    digest = sha256_file(path)
    if body["sha256"] != digest or body["size_bytes"] != path.stat().st_size:
        raise RuntimeError(f"server recorded {body['sha256']}/{body['size_bytes']}, not {digest}")
    if body["format"] != "hf-dir" or body["status"] != "pending":
        raise RuntimeError(f"unexpected version: {body}")
    stored = list((server.data_dir / "artifacts" / "models").glob(f"*/{digest}/*"))
    if len(stored) != 1 or stored[0].stat().st_size != path.stat().st_size:
        raise RuntimeError(f"stored artifact missing or wrong size: {stored}")
    leftovers = [p for p in (server.data_dir / "tmp").iterdir() if p.is_file()]
    if leftovers:
        raise RuntimeError(f"temporary upload files left behind: {leftovers}")


def bench_size(work: Path, server: Server, mib: int, runs: int) -> SizeResult:
    path = work / f"bert-bench-{mib}mib.zip"
    make_hf_zip(path, mib * MIB)
    assert sniff_upload(path, path.name, ArchiveLimits()) == "hf-dir"
    result = SizeResult(mib=mib, size=path.stat().st_size)
    server.start()
    try:
        # Warm-up: the first requests import and initialise what the worker needs.
        small = work / "small.zip"
        for i in range(2):
            add_nonce(small, f"warm-{mib}-{i}")
            status, body = server.upload(small, f"warmup-{mib}")
            assert status == 201, body
        # Deleting a version whose inspection job is still queued: refused (409).
        result.delete_answer = server.request("DELETE", f"/api/v1/versions/{body['id']}")
        (worker,) = server.worker_pids()
        time.sleep(1)
        result.idle_kib = _status_kib(worker, "VmRSS:") or 0
        for i in range(runs):
            add_nonce(path, f"{mib}-{i}")
            assert sniff_upload(path, path.name, ArchiveLimits()) == "hf-dir"
            result.floor_cache.append(disk_floor(path, work / "floor.bin", durable=False))
            result.runs.append(one_upload(server, path, f"bench-{mib}mib"))
            result.floor_sync.append(disk_floor(path, work / "floor.bin", durable=True))
            print(
                f"  {mib} MiB run {i + 1}: {result.runs[-1].seconds:.2f} s, "
                f"worker peak {result.runs[-1].peak_worker_kib / 1024:.1f} MiB",
                flush=True,
            )
        result.end_hwm_kib = _status_kib(worker, "VmHWM:") or 0
        result.end_rss_kib = _status_kib(worker, "VmRSS:") or 0
    finally:
        server.stop()
    path.unlink()
    result.client_hwm_kib = _status_kib(os.getpid(), "VmHWM:") or 0
    return result


# ------------------------------------------------------------------------------ report


def machine() -> dict[str, str]:
    import django
    import gunicorn

    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = _status_kib_file("/proc/meminfo", "MemTotal:")
    return {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "RAM": f"{mem_kib / 1024**2:.1f} GiB" if mem_kib else "unknown",
        "Python": platform.python_version(),
        "Django": django.get_version(),
        "gunicorn": gunicorn.__version__,
        "OS": platform.platform(),
        "load average before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _status_kib_file(path: str, key: str) -> int | None:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return None


def _mb_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"


def render(info: dict[str, str], results: list[SizeResult], runs: int, gen: dict[str, Any]) -> str:
    delete_status, delete_body = results[0].delete_answer
    lines = [
        "# Upload benchmark",
        "",
        "Generated by `python bench/upload.py` (also `make bench`).",
        "",
        "| machine | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in info.items()),
        "",
        "## Results",
        "",
        f"Median of {runs} runs per size, each upload interleaved with its disk floors. "
        "MB/s are 10^6 bytes per second. RSS is the gunicorn worker's (1 worker, 4 threads).",
        "",
        "| upload | median time | throughput | floor: copy to page cache | floor: copy + "
        "fdatasync | upload / floor (cache, sync) | worker RSS before | worker peak RSS "
        "(20 ms samples) | worker VmHWM during upload | growth (peak - before) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        t = statistics.median(run.seconds for run in r.runs)
        up = _mb_s(r.size, t)
        cache = _mb_s(r.size, statistics.median(r.floor_cache))
        sync = _mb_s(r.size, statistics.median(r.floor_sync))
        before = statistics.median(run.baseline_kib for run in r.runs)
        peak = max(run.peak_worker_kib for run in r.runs)
        hwms = [run.hwm_kib for run in r.runs if run.hwm_kib is not None]
        hwm = max(hwms) if hwms else None
        growth = max(run.peak_worker_kib - run.baseline_kib for run in r.runs)
        lines.append(
            f"| {r.size / MIB:,.0f} MiB zip | {t:.2f} s | **{up:.0f} MB/s** | {cache:.0f} MB/s "
            f"| {sync:.0f} MB/s | {up / cache:.2f}x, {up / sync:.2f}x | {_mib(int(before))} "
            f"| {_mib(peak)} | {_mib(hwm)} | **{growth / 1024:+.1f} MiB** |"
        )
    lines += [
        "",
        "Per run:",
        "",
        "| upload | run | time | MB/s | RSS before | peak RSS | VmHWM "
        "| master peak RSS | RSS samples | worker CPU user + sys | worker minor page faults |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for i, run in enumerate(r.runs, 1):
            lines.append(
                f"| {r.size / MIB:,.0f} MiB | {i} | {run.seconds:.2f} s "
                f"| {_mb_s(run.size, run.seconds):.0f} | {_mib(run.baseline_kib)} "
                f"| {_mib(run.peak_worker_kib)} | {_mib(run.hwm_kib)} "
                f"| {_mib(run.peak_master_kib)} | {run.samples} "
                f"| {run.cpu_user:.2f} + {run.cpu_sys:.2f} s | {run.minor_faults:,} |"
            )
    lines += [""]
    for r in results:
        lines.append(
            f"- {r.size / MIB:,.0f} MiB server: worker RSS idle after warm-up "
            f"{_mib(r.idle_kib)}, at the end {_mib(r.end_rss_kib)}; lifetime VmHWM "
            f"{_mib(r.end_hwm_kib)}. Benchmark client VmHWM so far: {_mib(r.client_hwm_kib)}."
        )
    for r in results:
        gib = sum(run.size for run in r.runs) / 1024**3
        user = sum(run.cpu_user for run in r.runs) / gib
        system = sum(run.cpu_sys for run in r.runs) / gib
        faults = sum(run.minor_faults for run in r.runs) / (gib * 1024)
        lines.append(
            f"- {r.size / MIB:,.0f} MiB uploads: the worker spent {user:.1f} s user + "
            f"{system:.1f} s system CPU per GiB and took {faults:,.0f} minor page faults "
            "per MiB received."
        )
    if len(results) >= 2:
        small, big = results[0], results[-1]
        g_small = max(run.peak_worker_kib - run.baseline_kib for run in small.runs)
        g_big = max(run.peak_worker_kib - run.baseline_kib for run in big.runs)
        ratio = big.size / small.size
        conclusion = (
            f"Upload memory does not grow with file size: {ratio:.0f}x the bytes changed the "
            f"worker's peak growth from {g_small / 1024:+.1f} MiB to {g_big / 1024:+.1f} MiB"
            if g_big - g_small < 16 * 1024
            else f"Upload memory GROWS with file size: {g_small / 1024:+.1f} MiB for "
            f"{small.size / MIB:.0f} MiB, {g_big / 1024:+.1f} MiB for {big.size / MIB:.0f} MiB"
        )
        t_big = statistics.median(run.seconds for run in big.runs)
        conclusion += (
            f"; a {big.size / MIB:,.0f} MiB model uploads at "
            f"{_mb_s(big.size, t_big):.0f} MB/s "
            f"({_mb_s(big.size, t_big) / _mb_s(big.size, statistics.median(big.floor_cache)):.2f}x "
            "a plain page-cache copy of the same bytes)."
        )
        lines += ["", f"**Conclusion:** {conclusion}"]
    lines += [
        "",
        "## Method",
        "",
        "- *Server*: a temporary `TINYFLEET_DATA_DIR`, `manage.py migrate`, "
        "`manage.py create_user bench --role operator`, `manage.py create_api_token bench`, "
        "then `gunicorn tinyfleet.wsgi:application --worker-class gthread --workers 1 "
        "--threads 4 --timeout 600` on 127.0.0.1: the embedded default (SQLite, local "
        "artifact files, filesystem Celery broker). No Celery worker runs, so each "
        "version's inspection job stays queued. A fresh gunicorn per size (same data dir); "
        "two small warm-up uploads first.",
        "- *Upload file*: a zipped Hugging Face folder (`config.json` for BERT, `vocab.txt`, "
        "`tokenizer_config.json`, `model.safetensors` with one F32 tensor "
        f"`[vocab, {HIDDEN}]`), written by streaming 1 MiB blocks of random bytes into a "
        "ZIP_STORED member, so the server's zip-bomb ratio check sees ratio 1. Each file is "
        "checked with `compression.pipeline.formats.sniff_upload` before every run, and the "
        "same generator's 2 MiB output passes the full HF inspection "
        f"(`inspect_model`: {gen.get('parameters', 0):,} parameters, model_type "
        f"{gen.get('model_type')!r}, tokenizer {gen.get('tokenizer', {}).get('type')!r}).",
        "- *Each run's bytes are new*: a one-line member is appended to the zip before the "
        "run, so its sha256 differs and the server stores it in full (storage is "
        "content-addressed; identical bytes would skip the copy). Versions are not deleted "
        "between runs: `DELETE /api/v1/versions/{id}` answers "
        f"{delete_status} `{json.dumps(delete_body)}` while the inspection job is queued, "
        "by design; the data dir is removed at the end.",
        "- *Client*: `http.client`, a multipart body sent as form fields, then the file in "
        "1 MiB `send` calls from a reused buffer, with a precomputed `Content-Length`; "
        "time runs from the request line to the parsed 201 response. After each run the "
        "client checks the answer (sha256, size, format `hf-dir`, status `pending`), that "
        "the artifact exists once under `artifacts/models/` with the right size, and that "
        "no temporary upload file is left in the data dir's `tmp/`.",
        "- *Server path timed*: socket read, multipart parsing, SHA-256 and write to a "
        "temporary file (`HashingCappedUploadHandler`), the zip checks and classification "
        "(`sniff_upload`), the copy into content-addressed storage, the database rows and "
        "the broker message.",
        "- *Memory*: a client thread reads `VmRSS` from `/proc/PID/status` of the gunicorn "
        "master and worker every 20 ms during the upload. The worker's `VmHWM` is reset "
        "(`/proc/PID/clear_refs` = 5) right before each upload and read right after it, so "
        "it is the kernel's exact peak for that upload. \"RSS before\" is the worker's VmRSS "
        "just before the upload.",
        "- *Disk floors*, same run and same bytes, interleaved with the uploads: a dd-like "
        "copy of the upload file in 1 MiB blocks to a new file on the same filesystem, "
        "(a) to the page cache only, (b) followed by `fdatasync`. The server does not "
        "fsync, and it writes each byte twice (temporary file, then storage), so (a) is the "
        "fairer floor. `os.sync()` runs (untimed) before every timed operation.",
        "- *CPU and page faults*: the worker's user and system CPU time and minor page "
        "faults (`/proc/PID/stat`) over each upload. `--server-env NAME=VALUE` runs the "
        "same benchmark with extra server environment (e.g. glibc `MALLOC_*` tunables) "
        "to diagnose where that time goes.",
        "- The machine is shared with other work (2 cores for client and server together); "
        "medians absorb some of that noise.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size-mib", default="256,1024", help="comma-separated sizes in MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--report", type=Path, default=REPORT)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the server (e.g. MALLOC_MMAP_THRESHOLD_=33554432)",
    )
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.server_env)
    sizes = [int(s) for s in args.size_mib.split(",") if s.strip()]
    info = machine()
    work = Path(tempfile.mkdtemp(prefix="tinyfleet-upload-bench-"))
    print(f"work dir {work}", flush=True)
    server = Server(data_dir=work / "data", log=work / "gunicorn.log", extra_env=extra_env)
    results = []
    try:
        gen = sanity_check_generator(work)
        server.setup()
        for mib in sizes:
            print(f"{mib} MiB ...", flush=True)
            results.append(bench_size(work, server, mib, args.runs))
    except BaseException:
        server.stop()
        print(f"failed; gunicorn log: {work / 'gunicorn.log'}", file=sys.stderr)
        args.keep = True
        raise
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    info["load average after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    if extra_env:
        info["extra server environment"] = " ".join(f"`{k}={v}`" for k, v in extra_env.items())
    text = render(info, results, args.runs, gen)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
