"""`make soak`: a long soak of the anonymizer image run the way AnoMed runs it (podman, nginx :80 ->
gunicorn under dumb-init, MODEL_DIR on a volume), deployed by scripts/container_test.py.

After one `POST /fit`, for SOAK_MINUTES (30) four kinds of client run at once, each in a thread: a
plaintext attacker posting 64-row npz batches to /predict without pause, two encrypted applicants
(party SDK; fresh keys uploaded every 5 decisions), a refitter (`POST /fit` every SOAK_REFIT_SECONDS,
300) and a sampler (every SOAK_SAMPLE_SECONDS, 15) of the anonymizer container's processes (RSS, open
fds, by kind) and of MODEL_DIR (MB, files). Every HTTP call is recorded with its status and latency.
Writes bench/results/soak.{json,md,png} and prints the table and a verdict line. Needs root and
podman. Short run: `SOAK_MINUTES=4 SOAK_REFIT_SECONDS=90 SOAK_SAMPLE_SECONDS=10 make soak`.
"""

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import anomed_utils as utils
import numpy as np
import psutil
import requests

from anonymizer.party import PartyClient
from anonymizer.party.client import ProtocolError
from scripts.container_test import PODMAN, Deployment, build_images, podman, step

RESULTS = Path(__file__).parent / "results"
MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
REFIT_SECONDS = float(os.environ.get("SOAK_REFIT_SECONDS", "300"))
SAMPLE_SECONDS = float(os.environ.get("SOAK_SAMPLE_SECONDS", "15"))
BATCH_ROWS = 64
DECISIONS_PER_KEY = 5
APPLICANTS = 2
WARM_UP_SECONDS = 300
JOIN_SECONDS = 120  # how long the end waits for calls in flight
ACCESS_LINE = re.compile(r'^\S+ - \S+ \[[^]]+\] "[A-Z]+ ')  # nginx's combined format
KEY_ID = re.compile(r"/[A-Za-z0-9_-]{22}(?=/|$)")
ROUTE_NAMES = {
    "POST /predict (plaintext)": "plaintext /predict",
    "POST /predict (encrypted)": "encrypted /predict",
    "POST /fhe/keys": "key upload",
}


class Recorder:
    """Every HTTP call as [elapsed s, route, status or "connection error", latency s], and counts of
    client-side exceptions; nothing is recorded once closed."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.calls: list[list] = []
        self.errors: Counter = Counter()
        self.keygens: list[list] = []
        self.refused: Counter = Counter()  # (route, status, the answer's first words) of 4xx/5xx
        self.lock = threading.Lock()
        self.open = True

    def elapsed(self) -> float:
        """Seconds since the soak started."""
        return time.monotonic() - self.t0

    def call(self, started: float, route: str, status, latency: float) -> None:
        """Record one HTTP call (`started` as elapsed seconds)."""
        with self.lock:
            if self.open:
                self.calls.append([round(started, 3), route, status, round(latency, 4)])

    def refusal(self, route: str, response: requests.Response) -> None:
        """Count a 4xx/5xx answer by its route, status and the start of its description."""
        try:
            body = response.json()
        except ValueError:
            body = None
        detail = (body.get("description") if isinstance(body, dict) else None) or response.text
        words = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", detail)).strip()[:100]
        with self.lock:
            if self.open:
                self.refused[f"{route} {response.status_code}: {words}"] += 1

    def error(self, kind: str) -> None:
        """Count one client-side exception."""
        with self.lock:
            if self.open:
                self.errors[kind] += 1


class RecordingSession(requests.Session):
    """A requests session that records each of its calls in a Recorder."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.last: requests.Response | None = None

    def request(self, method, url, *args, **kwargs):
        """Send, timing it; record the status, or "connection error" (and re-raise)."""
        route = route_of(method, url, "files" in kwargs)
        started = self.recorder.elapsed()
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.RequestException:
            self.recorder.call(started, route, "connection error", self.recorder.elapsed() - started)
            raise
        self.recorder.call(started, route, response.status_code, self.recorder.elapsed() - started)
        if response.status_code >= 400 and route != "POST /predict (plaintext)":
            self.recorder.refusal(route, response)
        self.last = response
        return response


def route_of(method: str, url: str, multipart: bool) -> str:
    """The route's label: method and path, key ids and party names replaced by placeholders."""
    path = KEY_ID.sub("/{key_id}", urlparse(url).path)
    path = re.sub(r"/inputs/[^/]+$", "/inputs/{party}", path)
    if path == "/predict":
        path += " (encrypted)" if multipart else " (plaintext)"
    return f"{method.upper()} {path}"


def challenge_rows(deployment: Deployment) -> tuple[np.ndarray, np.ndarray]:
    """(attack rows: members and non-members, applicant rows: the tuning split) from the challenge."""
    base = deployment.url("challenge") + "/data"

    def features(path: str) -> np.ndarray:
        response = requests.get(base + path, timeout=60)
        response.raise_for_status()
        return utils.bytes_to_named_ndarrays(response.content)["X"]

    attack = np.concatenate([features("/deanonymizer/members"), features("/deanonymizer/non-members")])
    return attack, features("/anonymizer/tuning")


def attacker(recorder: Recorder, url: str, rows: np.ndarray, stop: threading.Event) -> None:
    """Plaintext /predict of random 64-row batches, back to back, until `stop`."""
    session, rng = RecordingSession(recorder), np.random.default_rng(7)
    while not stop.is_set():
        X = rows[rng.choice(len(rows), BATCH_ROWS, replace=False)]
        try:
            session.post(url + "/predict", data=utils.named_ndarrays_to_bytes({"X": X}), timeout=120)
        except requests.RequestException as error:
            recorder.error(f"attacker: {type(error).__name__}")
            stop.wait(1)


def applicant(recorder: Recorder, url: str, rows: np.ndarray, stop: threading.Event, seed: int) -> None:
    """Encrypted decisions with a fresh key (generated and uploaded) every DECISIONS_PER_KEY."""
    rng = np.random.default_rng(seed)
    while not stop.is_set():
        workdir = Path(tempfile.mkdtemp(prefix="soak-applicant-"))
        try:
            key_cycle(recorder, url, rows, stop, rng, workdir)
        except ProtocolError as error:  # already recorded with its status by the session
            recorder.error(f"applicant: {str(error).split(':')[0]}")
        except Exception as error:  # a soak counts failures, it never stops on them
            recorder.error(f"applicant: {type(error).__name__}")
            stop.wait(1)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


def key_cycle(recorder, url: str, rows, stop: threading.Event, rng, workdir: Path) -> None:
    """One applicant key: keygen, upload, then DECISIONS_PER_KEY encrypted decisions."""
    party = PartyClient(url, workdir, log=lambda message: None, busy_retries=2)
    party.transport.session = RecordingSession(recorder)  # the SDK's own session, recorded
    parties = party.info().parties
    started = time.perf_counter()
    party.keygen()
    with recorder.lock:
        recorder.keygens.append([round(recorder.elapsed(), 3), round(time.perf_counter() - started, 3)])
    upload(party, stop)
    for _ in range(DECISIONS_PER_KEY):
        if stop.is_set():
            return
        row = rows[rng.integers(len(rows))]
        party.score({name: row[columns].tolist() for name, columns in parties.items()})


def upload(party: PartyClient, stop: threading.Event, tries: int = 4) -> None:
    """`party.key_id()`, again after Retry-After (at most 30 s) while the registry answers 429 (all
    of this address's keys in use); the last refusal raises."""
    for _ in range(tries - 1):
        try:
            party.key_id()
            return
        except ProtocolError as error:
            if error.status != 429:
                raise
        retry_after = party.transport.session.last.headers.get("Retry-After", "5")
        if stop.wait(min(30.0, float(retry_after) if retry_after.isdigit() else 5.0)):
            return
    party.key_id()


def refitter(recorder: Recorder, url: str, stop: threading.Event) -> None:
    """`POST /fit` at every multiple of REFIT_SECONDS (the next one due if a fit overran; 503
    while another fit runs is just recorded)."""
    session = RecordingSession(recorder)
    while not stop.wait(REFIT_SECONDS - recorder.elapsed() % REFIT_SECONDS):
        try:
            session.post(url + "/fit", timeout=1800)
        except requests.RequestException as error:
            recorder.error(f"refitter: {type(error).__name__}")


def process_kind(cmdline: str, parent_kind: str) -> str:
    """A process of the anonymizer container labelled by its command line and its parent's label."""
    for needle, kind in (
        ("dumb-init", "dumb-init"),
        ("nginx", "nginx"),
        ("entrypoint.sh", "entrypoint"),
        ("anonymizer.execution.pool", "executor supervisor"),
        ("resource_tracker", "resource tracker"),
    ):
        if needle in cmdline:
            return kind
    if parent_kind == "executor supervisor":
        return "executor"
    if "gunicorn" in cmdline:
        return "gunicorn worker" if parent_kind == "gunicorn master" else "gunicorn master"
    return "other"


def container_processes(container: str) -> list[dict]:
    """Each process of `container` (its init and descendants, seen from the host): kind, RSS, fds."""
    pid = podman("inspect", "-f", "{{.State.Pid}}", container, check=False)
    found, todo = [], [(int(pid), "")] if pid.isdigit() and int(pid) > 0 else []
    while todo:
        pid, parent_kind = todo.pop()
        try:
            process = psutil.Process(pid)
            with process.oneshot():
                cmdline = " ".join(process.cmdline())
                kind = process_kind(cmdline, parent_kind)
                rss, fds = process.memory_info().rss / 2**20, process.num_fds()
                children = process.children()
        except psutil.Error:
            continue
        found.append({"pid": pid, "kind": kind, "cmd": cmdline[:80], "rss_mb": round(rss, 1), "fds": fds})
        todo += [(child.pid, kind) for child in children]
    return found


def directory_size(root: Path) -> tuple[float, int]:
    """(MB, files) under `root`, tolerating files that vanish while walking."""
    total, files = 0, 0
    for directory, _, names in os.walk(root, onerror=lambda error: None):
        for name in names:
            try:
                total += os.lstat(os.path.join(directory, name)).st_size
                files += 1
            except OSError:
                pass
    return total / 2**20, files


def sample(recorder: Recorder, container: str, volume_path: Path) -> dict:
    """One sample: the container's processes by kind, totals, and MODEL_DIR's size and file count."""
    processes = container_processes(container)
    by_kind: dict = defaultdict(lambda: {"count": 0, "rss_mb": 0.0, "fds": 0})
    for process in processes:
        entry = by_kind[process["kind"]]
        entry["count"] += 1
        entry["rss_mb"] = round(entry["rss_mb"] + process["rss_mb"], 1)
        entry["fds"] += process["fds"]
    model_mb, model_files = directory_size(volume_path)
    return {
        "t": round(recorder.elapsed(), 1),
        "total_rss_mb": round(sum(p["rss_mb"] for p in processes), 1),
        "total_fds": sum(p["fds"] for p in processes),
        "by_kind": dict(by_kind),
        "model_dir_mb": round(model_mb, 2),
        "model_dir_files": model_files,
        "processes": processes,
    }


def sampler(recorder, container: str, volume_path: Path, samples: list, stop: threading.Event) -> None:
    """A sample now and every SAMPLE_SECONDS until `stop`."""
    while True:
        try:
            samples.append(sample(recorder, container, volume_path))
        except Exception as error:
            recorder.error(f"sampler: {type(error).__name__}")
        if stop.wait(SAMPLE_SECONDS):
            return


def initial_fit(url: str) -> dict:
    """The first `POST /fit` (SystemExit if it fails: nothing to soak); its model and seconds."""
    step("POST /fit (the first fit; a minute or two)")
    started = time.monotonic()
    fit = requests.post(url + "/fit", timeout=1800)
    if fit.status_code != 201:
        sys.exit(f"FAILED: the first /fit answered {fit.status_code}: {fit.text[:300]}")
    model = fit.json()["model"]
    keep = ("model_version", "hyperparameters", "pbs_count")
    return {"seconds": round(time.monotonic() - started, 1), **{k: model.get(k) for k in keep}}


def soak(deployment: Deployment) -> dict:
    """Fit, run the clients for MINUTES, and return the raw series."""
    url = deployment.url("anonymizer")
    fit = initial_fit(url)
    attack_rows, applicant_rows = challenge_rows(deployment)
    volume = Path(podman("volume", "inspect", "-f", "{{.Mountpoint}}", deployment.volume))
    recorder, stop, samples = Recorder(), threading.Event(), []
    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    threads = [
        threading.Thread(target=attacker, args=(recorder, url, attack_rows, stop), daemon=True),
        threading.Thread(target=refitter, args=(recorder, url, stop), daemon=True),
        threading.Thread(
            target=sampler,
            args=(recorder, deployment.names["anonymizer"], volume, samples, stop),
            daemon=True,
        ),
        *(
            threading.Thread(target=applicant, args=(recorder, url, applicant_rows, stop, i), daemon=True)
            for i in range(APPLICANTS)
        ),
    ]
    step(f"soaking for {MINUTES:g} min (refit every {REFIT_SECONDS:g} s, sample every {SAMPLE_SECONDS:g} s)")
    for thread in threads:
        thread.start()
    interrupted = wait_out(recorder, MINUTES * 60)
    minutes = recorder.elapsed() / 60
    stop.set()
    deadline = time.monotonic() + JOIN_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with recorder.lock:
        recorder.open = False
    samples.append(sample(recorder, deployment.names["anonymizer"], volume))
    return {
        "started_utc": started_utc,
        "minutes": round(minutes, 2),
        "interrupted": interrupted,
        "in_flight_at_end": sum(thread.is_alive() for thread in threads),
        "first_fit": fit,
        "calls": recorder.calls,
        "client_errors": dict(recorder.errors),
        "refused": dict(recorder.refused.most_common()),
        "keygen_seconds": recorder.keygens,
        "samples": samples,
    }


def wait_out(recorder: Recorder, seconds: float) -> bool:
    """Sleep until `seconds` into the soak, a progress line a minute; True if Ctrl-C cut it short."""
    try:
        while recorder.elapsed() < seconds:
            time.sleep(min(60.0, seconds - recorder.elapsed()))
            with recorder.lock:
                calls = len(recorder.calls)
            print(f"   {recorder.elapsed() / 60:.1f} min: {calls} calls", flush=True)
    except KeyboardInterrupt:
        print("   interrupted: reporting what was measured", flush=True)
        return True
    return False


def warm_up_seconds(minutes: float) -> float:
    """Where the post-warm-up part starts: 5 min, or a third of a shorter run."""
    return min(WARM_UP_SECONDS, minutes * 60 / 3)


def slope_per_hour(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, per hour; None with fewer than 2 times."""
    if len({t for t, _ in points}) < 2:
        return None
    t, value = np.array(points).T
    return round(float(np.polyfit(t / 3600, value, 1)[0]), 2) + 0.0  # + 0.0: no "-0.0"


def route_summary(calls: list[list]) -> dict:
    """Per route: answers by status, and p50/p95/max latency of its 2xx answers."""
    routes: dict = {}
    for route in sorted({c[1] for c in calls}):
        mine = [c for c in calls if c[1] == route]
        latencies = [c[3] for c in mine if isinstance(c[2], int) and c[2] < 300]
        routes[route] = {
            "statuses": dict(sorted(Counter(str(c[2]) for c in mine).items())),
            "p50": round(float(np.percentile(latencies, 50)), 4) if latencies else None,
            "p95": round(float(np.percentile(latencies, 95)), 4) if latencies else None,
            "max": round(max(latencies), 4) if latencies else None,
        }
    return routes


def resource_series(samples: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Every sampled quantity as (seconds, value) points: totals, MODEL_DIR, RSS and fds by kind."""
    series: dict = defaultdict(list)
    for s in samples:
        series["total RSS, MB"].append((s["t"], s["total_rss_mb"]))
        series["total open fds"].append((s["t"], s["total_fds"]))
        series["MODEL_DIR, MB"].append((s["t"], s["model_dir_mb"]))
        series["MODEL_DIR files"].append((s["t"], s["model_dir_files"]))
    kinds = sorted({kind for s in samples for kind in s["by_kind"]})
    for quantity, name in (("rss_mb", "RSS {}, MB"), ("fds", "fds {}")):
        for kind in kinds:
            series[name.format(kind)] = [
                (s["t"], s["by_kind"][kind][quantity]) for s in samples if kind in s["by_kind"]
            ]
    return dict(series)


def resource_summary(samples: list[dict], warm: float) -> dict:
    """Per quantity: the first sample after warm-up, the last, the max, and the post-warm-up slope."""
    summary = {}
    for name, points in resource_series(samples).items():
        after = [p for p in points if p[0] >= warm] or points[-1:]
        summary[name] = {
            "after_warm_up": after[0][1],
            "end": points[-1][1],
            "max": max(v for _, v in points),
            "slope_per_hour": slope_per_hour(after),
        }
    return summary


def git_commit() -> str:
    """`git rev-parse --short HEAD`, marked dirty when the work tree has changes."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip()
    return commit.stdout.strip() + (" (work tree dirty)" if dirty else "")


def summarize(run: dict) -> dict:
    """The run's summary: routes, error counts, resources after warm-up, slopes, verdict figures."""
    calls, warm = run["calls"], warm_up_seconds(run["minutes"])
    resources = resource_summary(run["samples"], warm)
    return {
        "started_utc": run["started_utc"],
        "minutes": run["minutes"],
        "git_commit": git_commit(),
        "cores": os.cpu_count(),
        "settings": {"refit_seconds": REFIT_SECONDS, "sample_seconds": SAMPLE_SECONDS},
        "warm_up_seconds": round(warm, 1),
        "routes": route_summary(calls),
        "server_errors_not_503": sum(isinstance(c[2], int) and c[2] >= 500 and c[2] != 503 for c in calls),
        "dropped_connections": sum(c[2] == "connection error" for c in calls),
        "refits": [c[0] for c in calls if c[1] == "POST /fit"],
        "keygen_p50_seconds": round(float(np.median([k[1] for k in run["keygen_seconds"]])), 2)
        if run["keygen_seconds"]
        else None,
        "resources": resources,
        "rss_slope_mb_per_hour": resources["total RSS, MB"]["slope_per_hour"],
        "model_dir_slope_mb_per_hour": resources["MODEL_DIR, MB"]["slope_per_hour"],
    }


def verdict(summary: dict) -> str:
    """The one-line verdict."""
    return (
        f"5xx other than 503: {summary['server_errors_not_503']}, "
        f"dropped connections: {summary['dropped_connections']}, "
        f"RSS slope after warm-up: {summary['rss_slope_mb_per_hour']} MB/h, "
        f"MODEL_DIR slope: {summary['model_dir_slope_mb_per_hour']} MB/h"
    )


def markdown(run: dict, summary: dict) -> str:
    """The report: header, answers and latency per route, resources, verdict."""
    fit = run["first_fit"]
    lines = [
        f"Soak of the anonymizer image: started {summary['started_utc']}, {summary['minutes']} min, "
        f"commit {summary['git_commit']}, {summary['cores']} cores; refit every "
        f"{REFIT_SECONDS:g} s, sample every {SAMPLE_SECONDS:g} s; first fit {fit['seconds']} s "
        f"({fit['hyperparameters']}, {fit['pbs_count']} PBS)"
        + ("; interrupted" if run["interrupted"] else "")
        + ".",
        "",
        "| route | answers by status | p50 s (2xx) | p95 s (2xx) | max s (2xx) |",
        "|---|---|---|---|---|",
    ]
    for route, r in summary["routes"].items():
        statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        lines.append(f"| {route} | {statuses} | {r['p50']} | {r['p95']} | {r['max']} |")
    lines += ["", *resource_table(summary), "", *footer(run, summary)]
    return "\n".join(lines)


def resource_table(summary: dict) -> list[str]:
    """Markdown rows: each sampled quantity after warm-up, at the end, its max and slope."""
    lines = [
        f"| container / volume (after warm-up = first sample after {summary['warm_up_seconds']:g} s) "
        "| after warm-up | end | max | slope per hour after warm-up |",
        "|---|---|---|---|---|",
    ]
    for name, r in summary["resources"].items():
        lines.append(f"| {name} | {r['after_warm_up']} | {r['end']} | {r['max']} | {r['slope_per_hour']} |")
    return lines


def footer(run: dict, summary: dict) -> list[str]:
    """Markdown lines: error counts, client-side exceptions, keygen time, the verdict."""
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(run["client_errors"].items())) or "none"
    return [
        f"- 5xx other than 503: {summary['server_errors_not_503']}; "
        f"dropped connections: {summary['dropped_connections']}",
        f"- client-side exceptions: {errors}",
        f"- refits requested at s: {summary['refits']}; calls in flight at the end (not counted): "
        f"{run['in_flight_at_end']} thread(s)",
        *[f"- refused: {answer} (x{count})" for answer, count in run["refused"].items()],
        f"- applicant keygen p50: {summary['keygen_p50_seconds']} s (client side, not an HTTP call)",
        "",
        f"**{verdict(summary)}**",
    ]


def plot(run: dict, summary: dict, path: Path) -> None:
    """soak.png: RSS (total, by kind), open fds, MODEL_DIR MB, per-route p95 a minute; refit lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = resource_series(run["samples"])
    figure, axes = plt.subplots(4, 1, figsize=(13, 13), sharex=True)
    plot_lines(axes[0], series, "RSS ", "total RSS, MB", "RSS, MB")
    plot_lines(axes[1], series, "fds ", "total open fds", "open fds")
    plot_lines(axes[2], series, "MODEL_DIR, MB", "MODEL_DIR, MB", "MODEL_DIR, MB")
    plot_p95(axes[3], run["calls"])
    for axis in axes:
        for t in summary["refits"]:
            axis.axvline(t / 60, color="grey", linestyle="--", linewidth=0.8)
        axis.axvline(summary["warm_up_seconds"] / 60, color="green", linestyle=":", linewidth=1)
        axis.grid(alpha=0.3)
    axes[0].set_title(f"Soak {summary['started_utc']} ({summary['git_commit']}): dashed = refit requested")
    axes[-1].set_xlabel("minutes since the soak started (dotted: end of warm-up)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_lines(axis, series: dict, prefix: str, total: str, label: str) -> None:
    """The `total` series bold and every other series starting with `prefix` thin."""
    for name, points in series.items():
        if name == total or (name.startswith(prefix) and not name.startswith("MODEL_DIR files")):
            t, value = np.array(points).T
            width = 2.2 if name == total else 1.0
            short = name if name == total else name.removeprefix(prefix).removesuffix(", MB")
            axis.plot(t / 60, value, label=short, linewidth=width)
    axis.set_ylabel(label)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


def plot_p95(axis, calls: list[list]) -> None:
    """Per route, the p95 latency of its 2xx answers in 1-minute windows (log scale)."""
    windows: dict = defaultdict(lambda: defaultdict(list))
    for started, route, status, latency in calls:
        if isinstance(status, int) and status < 300:
            windows[route][int(started // 60)].append(latency)
    for route, by_minute in sorted(windows.items()):
        minutes = sorted(by_minute)
        p95 = [np.percentile(by_minute[m], 95) for m in minutes]
        axis.plot(
            [m + 0.5 for m in minutes], p95, marker="o", markersize=3, label=ROUTE_NAMES.get(route, route)
        )
    axis.set_yscale("log")
    axis.set_ylabel("p95 of 2xx latency per minute, s")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


def save_log(container: str, path: Path) -> None:
    """The anonymizer container's log without nginx's access lines (those are the calls)."""
    log = subprocess.run([*PODMAN, "logs", container], capture_output=True, text=True)
    lines = [line for line in (log.stdout + log.stderr).splitlines() if not ACCESS_LINE.match(line)]
    RESULTS.mkdir(exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_results(run: dict, summary: dict) -> str:
    """soak.json (summary and resource samples), soak-calls.json.gz (every call, compact),
    soak.md and soak.png; returns the markdown."""
    RESULTS.mkdir(exist_ok=True)
    samples = {key: value for key, value in run.items() if key != "calls"}
    (RESULTS / "soak.json").write_text(json.dumps({"summary": summary, "run": samples}, indent=1))
    with gzip.open(RESULTS / "soak-calls.json.gz", "wt") as calls:
        json.dump(run.get("calls", []), calls, separators=(",", ":"))
    table = markdown(run, summary)
    (RESULTS / "soak.md").write_text(table + "\n")
    plot(run, summary, RESULTS / "soak.png")
    return table


def main() -> int:
    """Build, deploy, soak, always remove the deployment, then report."""
    build_images({})
    deployment = Deployment()
    try:
        step(f"starting {', '.join(deployment.names.values())} on network {deployment.network}")
        deployment.start()
        run = soak(deployment)
    finally:
        if deployment.names["anonymizer"] in deployment.started:
            save_log(deployment.names["anonymizer"], RESULTS / "soak-anonymizer.log")
        step("removing the deployment")
        deployment.remove()
    summary = summarize(run)
    print(write_results(run, summary))
    print(verdict(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
