"""Credentials: one detector, one gate on the composed config, one redaction at every writer.

The detector is driven by generated variants (name x case x encoding x position x value),
the gate by every source a config value comes from, the redaction through each choke point
(the atomic text writers, log records, the terminal, the trackers, job folder names). The
end-to-end sentinel runs are in test_credentials_writers.py.
"""

from __future__ import annotations

import base64
import io
import itertools
import logging
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import yaml

from tripletlab import credentials
from tripletlab.cli import fetch as fetch_cli
from tripletlab.cli import train as train_cli
from tripletlab.credentials import (
    SecretGate,
    config_strings,
    find_secret,
    redact,
    redact_tree,
    redacted_output,
    redaction,
    refuse_secrets,
)
from tripletlab.errors import ConfigError

SENTINEL = "s3ntinel-PW"
CORE = "Zq9SENTINELx7"  # in every variant below; no encoding changes letters and digits


def encodings_of(value: str) -> list[str]:
    """Every form a secret may take in text: plain, percent, plus, double percent, base64."""
    once = quote(value, safe="")
    forms = [value, once, quote_plus(value, safe=""), quote(once, safe="")]
    return [*forms, *(base64.b64encode(f.encode()).decode() for f in forms[:2])]


def leaks(text: str, value: str = CORE) -> list[str]:
    """The encodings of ``value`` found in ``text``."""
    return [form for form in encodings_of(value) if form in text]


# ------------------------------------------------------------- generated detection variants
NAMES = [
    *("token", "access_token", "api_key", "key", "password", "secret", "sig", "signature"),
    *("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "auth", "session"),
    *("credential", "my_token", "x-api-key", "accessToken", "client_secret", "PrivateToken"),
]
CASES = {"as given": str, "upper": str.upper, "lower": str.lower, "swapped": str.swapcase}
VALUES = {"alnum": CORE, "base64": f"{CORE}+/Ab=="}
ENCODINGS = {
    "plain": lambda v: v,
    "percent": lambda v: quote(v, safe=""),
    "plus": lambda v: quote_plus(v, safe=""),
    "double percent": lambda v: quote(quote(v, safe=""), safe=""),
}
# name, raw value -> a text holding the URI; "{n}" may be encoded too (percent, in the name).
POSITIONS = {
    "query": lambda n, v: f"https://h.example/p/f.gz?page=2&{n}={v}&a=1",
    "fragment": lambda n, v: f"https://h.example/cb#{n}={v}&state=ok",
    "userinfo": lambda n, v: f"postgresql+psycopg2://{n}:{v}@db.example:5432/optuna",
    "embedded in text": lambda n, v: f"failed: GET 'https://h.example/x?{n}={v}' (HTTP 403)",
    "inside a parameter": lambda n, v: (
        "https://proxy.example/?next=" + quote(f"https://h.example/x?{n}={v}", safe="")
    ),
    "encoded name": lambda n, v: f"https://h.example/x?{quote(n, safe='').replace('-', '%2D')}={v}",
}


def _variants(position: str, encoding: str):
    for name, (case, change), (kind, value) in itertools.product(
        NAMES, CASES.items(), VALUES.items()
    ):
        raw = ENCODINGS[encoding](value)
        if position == "userinfo" and "/" in raw:
            continue  # not a URI: a "/" in a password must be encoded
        yield f"{name} {case} {kind}", POSITIONS[position](change(name), raw)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("position", POSITIONS)
def test_every_variant_is_found_and_masked_in_every_encoding(position, encoding):
    failures = []
    for label, text in _variants(position, encoding):
        masked = redact(text)
        found = find_secret(text)
        if found is None or leaks(masked) or leaks(found) or find_secret(masked) is not None:
            failures.append(f"{label}: {text!r} -> {masked!r}")
        elif position != "inside a parameter" and ".example" not in masked:
            failures.append(f"{label}: the rest of the text is gone: {masked!r}")
    assert failures == []


@pytest.mark.parametrize(
    "text, masked",
    [
        (f"http://user:{SENTINEL}@host:5000", "http://user:***@host:5000"),
        (f"postgresql+psycopg2://u:{SENTINEL}@db/optuna", "postgresql+psycopg2://u:***@db/optuna"),
        (f"https://h/f.gz?a=1&token={SENTINEL}", "https://h/f.gz?a=1&token=***"),
        (f"see mysql://root:{SENTINEL}@10.0.0.1/x now", "see mysql://root:***@10.0.0.1/x now"),
        # Azure SAS: only the signature; X-Amz-*: the credential, token and signature.
        ("https://a.blob.core.windows.net/c?sv=2022&sp=r&sig=ab%2Bc%3D", "…?sv=2022&sp=r&sig=***"),
        # A sweep job's folder name: only "/" was written %2F.
        (f"logger.uri=https:%2F%2Fu:{SENTINEL}@h,seed=1", "logger.uri=https:%2F%2Fu:***@h,seed=1"),
        # A copy of the value elsewhere in the same text, in another encoding.
        (f"https://h/?token={CORE}%2B and {CORE}+ again", "https://h/?token=*** and *** again"),
    ],
)
def test_masking_keeps_everything_but_the_secret(text, masked):
    if masked.startswith("…"):
        masked = text.split("?")[0] + masked[1:]
    assert redact(text) == masked
    assert redact(masked) == masked  # idempotent: a masked value is no secret


@pytest.mark.parametrize(
    "text",
    [
        "sqlite:///outputs/optuna.db",
        "sqlite:///data/keys/token.db",
        "http://user@host:5000",  # a user name alone is not a secret
        "https://host/path?page=2&sort_key=name&next_page_token=abc&token_type=bearer",
        "https://host/keys/token/secret.tar.gz",  # credential words in a path
        "https://host/?monkey=1&keys=2&passive=3&tokens_per_s=4",
        "file:///data/x.gz",
        "no uri at all: a:b@c, token=abc",
        "/data/keys/my_token_dir/",
        "https://host/?token=&key=***",  # empty or already masked
    ],
)
def test_false_positives_stay_out(text):
    assert find_secret(text) is None
    assert redact(text) == text


def test_the_message_names_the_key_and_where_the_secret_goes_never_the_secret():
    cases = {
        "logger.tracking_uri": (f"http://u:{SENTINEL}@h", "MLFLOW_TRACKING_PASSWORD"),
        "hydra.sweeper.storage": (f"postgresql://u:{SENTINEL}@h/db", "PGPASSWORD"),
        "dataset.url": (f"https://h/x.gz?token={SENTINEL}", "dataset.root"),
        "--url": (f"https://h/x.gz?sig={SENTINEL}", "--root"),
    }
    for key, (value, hint) in cases.items():
        with pytest.raises(ConfigError) as err:
            refuse_secrets([("seed", 1), (key, value)])
        assert key in str(err.value) and hint in str(err.value)
        assert SENTINEL not in str(err.value)


def test_every_leaf_of_a_config_is_searched_interpolations_resolved(monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setenv("TRACKING", f"http://u:{SENTINEL}@h")
    cfg = OmegaConf.create(
        {"logger": {"uri": "${oc.env:TRACKING}"}, "list": [{"deep": "x"}], "bad": "${nope}"}
    )
    leaves = dict(config_strings(cfg))
    assert leaves["logger.uri"] == f"http://u:{SENTINEL}@h"
    assert leaves["list.0.deep"] == "x"
    assert leaves["bad"] == "${nope}"  # unresolvable: given as written
    with pytest.raises(ConfigError, match="logger.uri"):
        refuse_secrets(config_strings(cfg))


# ------------------------------------------------------------------ the gate, by source
def _uri(i: int) -> str:
    """The i-th generated credential URI (rotating position, name and encoding)."""
    position = list(POSITIONS)[i % len(POSITIONS)]
    encoding = list(ENCODINGS)[i % len(ENCODINGS)]
    variants = list(_variants(position, encoding))
    return variants[(7 * i) % len(variants)][1]


def _experiment(folder: Path, body: dict) -> Path:
    (folder / "experiment").mkdir(parents=True, exist_ok=True)
    text = "# @package _global_\n" + yaml.safe_dump(body)
    (folder / "experiment" / "leak.yaml").write_text(text)
    return folder


def _quoted(uri: str) -> str:
    return "'" + uri.replace("\\", "\\\\").replace("'", "\\'") + "'"


SOURCES = {
    "command line": lambda uri, tmp, env: ["logger=mlflow", f"logger.tracking_uri={_quoted(uri)}"],
    "-cd experiment YAML": lambda uri, tmp, env: [
        "-cd",
        str(
            _experiment(
                tmp, {"defaults": [{"override /logger": "mlflow"}], "logger": {"tracking_uri": uri}}
            )
        ),
        "experiment=leak",
    ],
    "search path": lambda uri, tmp, env: [
        f"hydra.searchpath=[file://{_experiment(tmp, {'optimized_metric': 'map_at_r', 'dataset': {'name': uri}})}]",
        "experiment=leak",
    ],
    "${oc.env:...}": lambda uri, tmp, env: (
        env.setenv("LEAKY", uri),
        ["logger=mlflow", "logger.tracking_uri=${oc.env:LEAKY}"],
    )[1],
    "a sweep's second value": lambda uri, tmp, env: (
        env.setenv("LEAKY", uri),
        ["-m", "logger=mlflow", "logger.tracking_uri=sqlite:///x.db,${oc.env:LEAKY}"],
    )[1],
    "Optuna storage": lambda uri, tmp, env: [
        "hparams_search=optuna",
        f"hydra.sweeper.storage={_quoted(uri)}",
    ],
    "Optuna storage from ${oc.env:...}": lambda uri, tmp, env: (
        env.setenv("LEAKY", uri),
        ["hparams_search=optuna", "hydra.sweeper.storage=${oc.env:LEAKY}"],
    )[1],
    "Optuna search space": lambda uri, tmp, env: [
        "hparams_search=optuna",
        f"hydra.sweeper.params.logger.experiment=choice(a,{_quoted(uri)})",
    ],
    "launcher key": lambda uri, tmp, env: [
        "-m",
        "hydra/launcher=slurm",
        f"hydra.launcher.comment={_quoted(uri)}",
    ],
    "launcher key in an experiment YAML": lambda uri, tmp, env: [
        "-m",
        "-cd",
        str(_experiment(tmp, {"hydra": {"launcher": {"comment": uri}}})),
        "hydra/launcher=slurm",
        "experiment=leak",
    ],
}


@pytest.mark.parametrize("variant", range(2))
@pytest.mark.parametrize("source", SOURCES)
def test_the_gate_refuses_a_credential_from_every_source(source, variant, tmp_path, monkeypatch):
    uri = _uri(variant * len(SOURCES) + list(SOURCES).index(source))
    args = [*SOURCES[source](uri, tmp_path, monkeypatch), "dataset=digits"]  # options first
    with pytest.raises(ConfigError, match="holds a credential") as err:
        train_cli.check_overrides(args)
    assert not leaks(str(err.value)), err.value


@pytest.mark.parametrize(
    "args",
    [
        ["dataset=image_folder", "dataset.root=/data/keys/"],
        ["dataset=image_folder", "dataset.root=/data/my_token/secret_stuff"],
        ["mining.margin=0.3", "mining=batch_hard"],
        ["logger=mlflow", "logger.tracking_uri=https://mlflow.example:5000/keys/token/"],
        ["logger=mlflow", "logger.tracking_uri='https://mlflow.example/?page=2&sort_key=a'"],
        ["hparams_search=optuna", "hydra.sweeper.storage=sqlite:///outputs/keys/token.db"],
    ],
)
def test_the_gate_lets_plain_configs_through(args):
    train_cli.check_overrides(args)


def test_hydras_own_composition_is_gated_first(capsys):
    """SecretGate is the first callback (before ContinueStudy opens an Optuna storage) and
    stops the run or sweep with one line before Hydra makes a folder."""
    from tests.helpers import compose

    for extra in ([], ["hparams_search=optuna"]):
        cfg = compose([*extra, "logger=mlflow", f"logger.experiment={_quoted(_uri(1))}"], True)
        assert list(cfg.hydra.callbacks)[0] == "secret_gate"
        for start in (SecretGate().on_run_start, SecretGate().on_multirun_start):
            with pytest.raises(SystemExit) as exit_:
                start(config=cfg)
            assert exit_.value.code == 1
            err = capsys.readouterr().err
            assert err.startswith("error: logger.experiment holds a credential") and not leaks(err)


def test_a_refused_sweep_job_is_marked_failed_with_the_message_masked(tmp_path, monkeypatch):
    """The job's own gate (a trial's values, resolved in the job) before it writes."""
    from omegaconf import OmegaConf

    from tripletlab.hydra_app import gate_job
    from tripletlab.run_folder import RunFolder

    monkeypatch.setenv("LEAKY", _uri(2))
    cfg = OmegaConf.create({"logger": {"experiment": "${oc.env:LEAKY}"}})
    hydra_cfg = OmegaConf.create({"runtime": {"output_dir": str(tmp_path / "job")}})
    assert gate_job(cfg, hydra_cfg, multirun=True) is False
    summary = RunFolder(tmp_path / "job").read_summary()
    assert summary["status"] == "failed" and "holds a credential" in summary["error"]
    assert all(not leaks(p.read_text()) for p in (tmp_path / "job").rglob("*") if p.is_file())


# -------------------------------------------------------------- the redaction choke points
@pytest.fixture
def warnings_log(caplog):
    redaction._warned.clear()  # one warning per writer and process: each test sees its own
    caplog.set_level(logging.WARNING, logger="tripletlab")
    return caplog


def test_the_text_writers_mask_and_name_the_file(tmp_path, warnings_log):
    from tripletlab.io_utils import atomic_write_csv, atomic_write_json, redact_file

    uri = _uri(4)
    atomic_write_json(tmp_path / "summary.json", {"config": {"u": uri}})
    atomic_write_csv(tmp_path / "m.csv", [{"a": uri}], ["a"])
    hydra_file = tmp_path / "multirun.yaml"
    hydra_file.write_text(f"x: {uri}\n")  # written by another program
    redact_file(hydra_file)
    for path in (tmp_path / "summary.json", tmp_path / "m.csv", hydra_file):
        assert not leaks(path.read_text()) and "***" in path.read_text()
    warned = [r.getMessage() for r in warnings_log.records]
    assert any("a credential reached" in m and "summary.json" in m for m in warned), warned
    assert not any(leaks(m) for m in warned)


def test_log_records_and_tracebacks_are_masked_whatever_the_handler(warnings_log):
    credentials.install_log_redaction()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    other = logging.getLogger("some.library")
    other.addHandler(handler)
    try:
        other.warning("connecting to %s", _uri(5))
        try:
            raise ConnectionError(f"refused by {_uri(6)}")
        except ConnectionError:
            other.exception("failed")
    finally:
        other.removeHandler(handler)
    text = stream.getvalue()
    assert "connecting to" in text and "ConnectionError: refused by" in text
    assert not leaks(text), text


def test_what_a_command_prints_is_masked(capsys, warnings_log):
    with redacted_output():
        print(f"downloaded from {_uri(7)}")
        print(f"error: {_uri(8)}", file=sys.stderr)
    out, err = capsys.readouterr()
    assert "downloaded from" in out and not leaks(out + err)
    assert sys.stdout is not None and not isinstance(sys.stdout, credentials.RedactingStream)


def test_the_traceback_of_a_bug_in_a_command_is_masked():
    import subprocess

    code = (
        "from tripletlab.cli.common import run_cli\n"
        "def main(argv):\n"
        f"    raise RuntimeError({'bug while talking to ' + _uri(14)!r})\n"
        "run_cli(main, [])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1 and "RuntimeError: bug while talking to" in proc.stderr
    assert not leaks(proc.stderr), proc.stderr


def test_fetch_refuses_a_url_with_a_credential(capsys, tmp_path):
    uri = f"https://user:{CORE}@example.invalid/digits.tgz"
    code = fetch_cli.main(["digits", "--root", str(tmp_path), "--url", uri])
    out, err = capsys.readouterr()
    assert code == 1 and err.startswith("error: --url holds a credential")
    assert "--root" in err and not leaks(out + err)


def test_trackers_and_job_folders_get_the_masked_values(warnings_log):
    from tripletlab.sweep import job_dirname
    from tripletlab.training.callbacks import Callbacks

    class Recorder:
        name = "Recorder"

        def on_train_end(self, summary):
            self.summary = summary

    recorder = Recorder()
    hooks = Callbacks()
    hooks.extend([recorder], guarded=True)  # how the trackers are added
    hooks.on_train_end({"error": f"HTTP 401 from {_uri(9)}", "config": {"x": [_uri(10)]}})
    assert not leaks(repr(recorder.summary)) and "HTTP 401 from" in recorder.summary["error"]
    name = job_dirname(f"logger.experiment={_uri(11).replace(',', '')},seed=1")
    assert not leaks(name) and name.endswith("seed=1") and "/" not in name
    assert redact_tree({_uri(12): (_uri(13), 1)}) == {redact(_uri(12)): (redact(_uri(13)), 1)}


# ------------------------------------------------- end to end: refused before any write
NOTHING_WRITTEN = {
    "-cd experiment YAML (a run)": ["-cd", "{cd}", "experiment=leak"],
    "Optuna sweep, ${oc.env:...} tracking URI": [
        "hparams_search=optuna",
        "logger=mlflow",
        "logger.tracking_uri=${oc.env:LEAKY}",
    ],
    "a sweep's second value from the environment": [
        "-m",
        "logger=mlflow",
        "logger.tracking_uri=sqlite:///x.db,${oc.env:LEAKY}",
    ],
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", NOTHING_WRITTEN)
def test_a_refused_command_writes_nothing(case, tmp_path):
    """The issue's probes: refused with one line, and no file anywhere holds the secret."""
    import os
    import subprocess

    from tests.helpers import ROOT

    uri = _uri(3)
    mlflow = {"defaults": [{"override /logger": "mlflow"}], "logger": {"experiment": uri}}
    cd = _experiment(tmp_path / "conf", mlflow)
    args = [a.replace("{cd}", str(cd)) for a in NOTHING_WRITTEN[case]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LEAKY": uri, "TF_CPP_MIN_LOG_LEVEL": "2"}
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args, "dataset=digits"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "holds a credential" in lines[0]
    assert not leaks(proc.stdout + proc.stderr)
    assert list(work.iterdir()) == []  # no outputs/, no run folder, no sweep folder
