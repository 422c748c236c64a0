"""The closed loop, unattended (``make demo-loop``): drift -> retrain -> gate -> canary -> promote,
then a round on wrong feedback that must leave the champion unchanged.

    .venv/bin/python examples/loop/loop_demo.py [--out runs/loop-demo] [--port 0]

1. Financial PhraseBank is cut in two: sentences without digits and with digits (figures:
   "Operating profit rose to EUR 13.1 mn ..."). The champion (packaged all-MiniLM-L6-v2, a
   few epochs, short max length) is trained on the sentences without figures plus a fifth of
   the figures, and promoted, then served by ``honed serve`` (a subprocess with the request
   log).
2. Round 1: replayed traffic drifts to the figures it did not see; simulated users correct the
   answers (POST /v1/feedback with the true label). The drift trigger fires, ``honed loop run``
   exports the feedback, trains a challenger on the original data + the corrections, gates it
   against the champion, canaries it on the server while users keep sending traffic with honest
   thumbs up/down, and promotes it.
3. Round 2: the feedback is deliberately wrong (labels flipped). The loop retrains; the gate
   rejects the challenger or the canary rolls it back; the champion is unchanged.

Each decision is printed with its evidence; the HTML report is left in
``OUT/.honed/loops/loop-demo/report.html``. Everything lives under ``--out`` (its own state
folder), so the demo never touches your registry.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
NAME = "loop-demo"
LABELS = ["negative", "neutral", "positive"]
FLIP = {"positive": "negative", "negative": "positive", "neutral": "positive"}
HONED = [sys.executable, "-m", "honed.cli"]


# --- data ------------------------------------------------------------------------------------


def load_phrasebank(data_dirs: list[Path]) -> list[dict[str, str]]:
    for base in data_dirs:
        path = base / "financial_phrasebank" / "Sentences_AllAgree.txt"
        if path.is_file():
            rows = []
            for line in path.read_text(encoding="iso-8859-1").splitlines():
                text, _, label = line.rpartition("@")
                if text.strip() and label.strip() in LABELS:
                    rows.append({"text": text.strip(), "label": label.strip()})
            return rows
    raise SystemExit(f"Financial PhraseBank not found under {', '.join(map(str, data_dirs))}")


def split_parts(rows: list[dict[str, str]], seed: int) -> dict[str, list[dict[str, str]]]:
    """seen: no digits (the champion's data); figures: with digits (the drift)."""
    rng = random.Random(seed)
    seen = [r for r in rows if not re.search(r"\d", r["text"])]
    figures = [r for r in rows if re.search(r"\d", r["text"])]
    rng.shuffle(seen)
    rng.shuffle(figures)
    # The champion sees a small share of the figures: enough for its frozen evaluation set to
    # hold some (so the gate can tell a challenger that learned them), far from enough to
    # learn them. Sentences without figures are mostly neutral; figures carry the polarity.
    n_known = len(figures) // 5
    known = seen + figures[:n_known]
    rng.shuffle(known)
    return {"seen": known, "figures": figures[n_known:]}


def write_jsonl(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


#: Sizes of the demo; --quick: a smoke run of the plumbing (decisions not meaningful).
FULL = {"epochs": 4, "max_length": 64, "seen": None, "round1": 400, "round2": 250, "canary": 300}
QUICK = {"epochs": 1, "max_length": 32, "seen": 240, "round1": 120, "round2": 110, "canary": 80}


def write_spec(out: Path, data: Path, size: dict) -> Path:
    spec = {
        "name": NAME,
        "task": "classification",
        "output_dir": str(out / "champion"),
        "model": {
            "base": "packaged:all-minilm-l6-v2",
            "pooling": "auto",
            "max_length": size["max_length"],
        },
        "data": {"source": str(data), "labels": LABELS, "split": {"seed": 7}},
        "method": {"name": "full"},
        "training": {
            "epochs": size["epochs"],
            "learning_rate": 8.0e-5,
            "batch_size": 16,
            "label_smoothing": 0.1,
            "warmup_fraction": 0.06,
            "early_stopping_patience": 2,
            "metric_for_best_model": "macro_f1",
            "num_threads": 2,
            "save_total_limit": 1,
            "seed": 7,
        },
        # The frozen set is the champion's test split (~300 sentences without figures): at that
        # size a 0.5-point margin refuses most equal challengers (docs/benchmarks.md, gate
        # decisions), so the demo allows 3 points; the canary judges the figures.
        "eval": {"baselines": ["majority"], "worst_examples": 5, "gate": {"margin": 0.03}},
        # A better model trained on the figures answers them differently from the champion:
        # agreement and prediction shift are loosened; the users' thumbs decide.
        "canary": {"min_requests": 100, "min_agreement": 0.5, "max_prediction_shift": 0.35},
        "registry": {"alias_on_register": "challenger"},
        # The scan reports but changes nothing here, so the champion's data and split are those
        # of the documented run: on this sample it flags one natural phrase as a possible
        # trigger ('a significant', 6 rows all positive), one conflicting duplicate and a
        # press-release phone number; dropping them moved the split enough that round 1's
        # challenger no longer beat the champion on the frozen set (docs/benchmarks.md).
        "scan": {
            "policy": {
                "trigger": "warn",
                "conflicting_duplicate": "warn",
                "pii": "warn",
                "secret": "warn",
            }
        },
        "loop": {
            # The simulated users share one API key, so feedback cannot be told apart by key:
            # round 2's wrong corrections reach training and the gate is what refuses them.
            "hold_flagged_feedback": False,
            # Round 1 fires on drift; round 2 on the volume of (wrong) corrections.
            "triggers": {"drift": True, "min_feedback": size["round2"] - 10},
            "poll_seconds": 5,
            "request_log_url": f"sqlite:///{out / '.honed' / 'requests.db'}",
            "canary": {"weight": 0.5, "mode": "canary", "timeout": "4m", "poll": "5s"},
        },
    }
    path = out / f"{NAME}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- processes -------------------------------------------------------------------------------


def env_for(out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HONED_HOME=str(out / ".honed"),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="2",
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]),
    )
    return env


def honed(env: dict[str, str], *args: str, check: bool = True) -> int:
    print(f"$ honed {' '.join(args)}", flush=True)
    code = subprocess.run([*HONED, *args], env=env).returncode
    if check and code != 0:
        raise SystemExit(f"honed {args[0]} failed ({code})")
    return code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def create_key(env: dict[str, str], out: Path) -> str:
    """An API key with both scopes: the server's admin routes answer only such a key."""
    keys = out / "keys.yaml"
    args = ["apikey", "create", "loop-demo", "--scopes", "infer,admin", "--file", str(keys)]
    done = subprocess.run([*HONED, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"honed apikey create failed: {done.stderr.strip()}")
    return done.stdout.strip().splitlines()[-1]


def start_server(env: dict[str, str], port: int, out: Path, key: str) -> subprocess.Popen:
    log = (out / "server.log").open("w")
    cmd = [*HONED, "serve", f"{NAME}={NAME}@champion", "--port", str(port)]
    cmd += ["--api-keys-file", str(out / "keys.yaml")]
    cmd += ["--classify-workers", "1"]
    # One key stands for every simulated user: no per-key feedback cap (1,000/hour by default).
    env = {**env, "HONED_SERVE_FEEDBACK_PER_KEY_PER_HOUR": "0"}
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); see {out / 'server.log'}")
        try:
            auth = {"Authorization": f"Bearer {key}"}
            if httpx.get(f"{url}/readyz", headers=auth, timeout=2).status_code == 200:
                print(f"server ready at {url} (log: {out / 'server.log'})", flush=True)
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit("server not ready after 5 minutes")


# --- simulated users -------------------------------------------------------------------------


class Users:
    """Send classify requests and feedback, as users of the served model would."""

    def __init__(self, url: str, db: Path, seed: int, key: str):
        self.url = url
        self.db = db
        auth = {"Authorization": f"Bearer {key}"}
        self.http = httpx.Client(base_url=url, timeout=60, headers=auth)
        self.rng = random.Random(seed)
        self.sent = {"requests": 0, "corrections": 0, "thumbs": 0, "correct": 0}

    def ask(self, row: dict[str, str]) -> tuple[str | None, str | None]:
        response = self.http.post("/v1/classify", json={"model": NAME, "input": row["text"]})
        if response.status_code != 200:
            return None, None
        self.sent["requests"] += 1
        label = response.json()["data"][0]["label"]
        self.sent["correct"] += label == row["label"]
        return label, self._request_id(response, row["text"])

    def _request_id(self, response: httpx.Response, text: str) -> str | None:
        return response.headers.get("x-request-id") or response.json().get("id")

    def feedback(self, request_id: str | None, **body: str) -> None:
        if request_id is None:
            return
        response = self.http.post("/v1/feedback", json={"request_id": request_id, **body})
        if response.status_code < 300:
            self.sent["corrections" if "correction" in body else "thumbs"] += 1

    def correct(self, rows: list[dict[str, str]], flip: bool = False) -> None:
        """Each answer corrected with the true label (or, with ``flip``, a wrong one)."""
        for row in rows:
            _label, rid = self.ask(row)
            self.feedback(rid, correction=FLIP[row["label"]] if flip else row["label"])

    def thumbs(self, pool: list[dict[str, str]], stop: threading.Event, pause: float) -> None:
        """Traffic with honest thumbs until ``stop``: what the canary analysis watches."""
        while not stop.is_set():
            row = self.rng.choice(pool)
            label, rid = self.ask(row)
            if label is not None and self.rng.random() < 0.5:
                self.feedback(rid, rating="up" if label == row["label"] else "down")
            stop.wait(pause)


def mix(parts: dict, n: int, share_figures: float, rng: random.Random) -> list[dict[str, str]]:
    n_fig = round(n * share_figures)
    return rng.sample(parts["figures"], n_fig) + rng.sample(parts["seen"], n - n_fig)


# --- the rounds ------------------------------------------------------------------------------


def champion_version(env: dict[str, str]) -> str:
    code = (
        "from honed.registry.store import Registry;"
        f"print(Registry().get_version('{NAME}@champion').version)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return out.stdout.strip()


def run_round(env, spec: Path, server: str | None, users: Users, pool) -> None:
    """One watched round (``--max-rounds 1``) while users keep sending traffic."""
    stop = threading.Event()
    traffic = threading.Thread(target=users.thumbs, args=(pool, stop, 0.1), daemon=True)
    traffic.start()
    try:
        args = ["loop", "run", str(spec), "--max-rounds", "1"]
        honed(env, *args, *(["--server", server] if server else []))
    finally:
        stop.set()
        traffic.join(timeout=30)


def server_has_canary_api(url: str, key: str) -> bool:
    auth = {"Authorization": f"Bearer {key}"}
    try:
        return httpx.get(f"{url}/admin/canary", headers=auth, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/loop-demo"))
    parser.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, action="append")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes")
    args = parser.parse_args()
    started = time.perf_counter()
    out = args.out.resolve()
    if (out / ".honed").exists():
        import shutil

        shutil.rmtree(out)  # a fresh demo every time: its own state folder
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    data_dirs = args.data_dir or [REPO / "data", REPO.parent / "shared" / "data"]
    size = QUICK if args.quick else FULL
    parts = split_parts(load_phrasebank(data_dirs), args.seed)
    parts["seen"] = parts["seen"][: size["seen"]]
    print(
        f"data: {len(parts['seen'])} sentences for the champion "
        f"({sum(bool(re.search(r'[0-9]', r['text'])) for r in parts['seen'])} with figures), "
        f"{len(parts['figures'])} with figures (the drift)",
        flush=True,
    )
    port = args.port or free_port()
    spec = write_spec(out, write_jsonl(out / "data" / "seen.jsonl", parts["seen"]), size)
    env = env_for(out)

    print("\n== the champion: trained on few sentences with figures ==", flush=True)
    honed(env, "run", str(spec), "--overwrite")
    honed(env, "models", "promote", NAME, "1")
    # The loop's canary step calls the admin API with the key in HONED_ADMIN_KEY.
    key = env["HONED_ADMIN_KEY"] = create_key(env, out)
    server = start_server(env, port, out, key)
    url = f"http://127.0.0.1:{port}"
    canary = server_has_canary_api(url, key)
    if not canary:
        print("NOTE: this server has no canary admin API yet: the gate decides alone")
    users = Users(url, out / ".honed" / "requests.db", args.seed, key)
    try:
        print("\n== round 1: traffic drifts to figures; users correct the answers ==", flush=True)
        users.correct(mix(parts, size["round1"], 0.8, rng))
        print(f"users so far: {users.sent}", flush=True)
        run_round(env, spec, url if canary else None, users, mix(parts, size["canary"], 0.8, rng))
        after_1 = champion_version(env)

        print("\n== round 2: the corrections are wrong (labels flipped) ==", flush=True)
        users.correct(mix(parts, size["round2"], 0.8, rng), flip=True)
        print(f"users so far: {users.sent}", flush=True)
        run_round(env, spec, url if canary else None, users, mix(parts, size["canary"], 0.8, rng))
        after_2 = champion_version(env)
    finally:
        server.terminate()
        server.wait(timeout=60)
    honed(env, "loop", "status", str(spec))
    elapsed = time.perf_counter() - started
    ok = after_1 == "2" and after_2 == after_1
    print(f"\nchampion: v1 -> round 1: v{after_1} -> round 2: v{after_2} ({elapsed / 60:.1f} min)")
    print(f"report: {out / '.honed' / 'loops' / NAME / 'report.html'}")
    good = "DEMO OK: promoted on honest feedback, refused on flipped labels"
    print(good if ok else "DEMO: UNEXPECTED (see the decisions above)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
