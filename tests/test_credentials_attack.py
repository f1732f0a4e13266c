"""Credentials, attacked by someone who did not write the code: variants the other tests
do not generate, each one a break found (and fixed) or a false positive to keep out.

- URIs that ``urllib.parse`` reads as carrying a credential although the text breaks the
  usual shape: an unencoded quote, brace, pipe, caret, backtick or "<" in the password, a
  newline or tab in it (a YAML block scalar), a token given as the user name alone
  (``https://ghp_...@github.com``), an ``?authorization=`` parameter;
- ``--resume`` endpoints named by a text that merely contains them, or reaching the
  tracking URI through an interpolation of another key.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
import yaml

from tripletlab.cli import sweep as sweep_cli
from tripletlab.cli import train as train_cli
from tripletlab.credentials import find_secret, redact, refuse_secrets
from tripletlab.errors import ConfigError

CORE = "Qk7SENTINELw9"

# Characters a password may hold unencoded that end a URI in prose; urllib keeps them.
ODD_CHARS = ["'", '"', "{", "}", "|", "^", "`", "<", ">"]
# Where the odd character stands in the password.
PLACES = {
    "before": lambda c: f"{c}{CORE}",
    "after": lambda c: f"{CORE}{c}x",
    "twice": lambda c: f"a{c}{c}{CORE}",
}
HOSTS = ["h.example", "h.example:5000/p?a=1", "[::1]:8080"]
SCHEMES = ["https", "postgresql+psycopg2", "redis"]


def odd_passwords():
    for char, (place, make), host, scheme in itertools.product(
        ODD_CHARS, PLACES.items(), HOSTS, SCHEMES
    ):
        yield f"{char!r} {place} {scheme} {host}", f"{scheme}://u:{make(char)}@{host}"


# A token given as the user name, with no password: git, requests and MLflow send it.
TOKENS = {
    "GitHub classic": f"ghp_{CORE}abcdefghijklmnopqrstu",
    "GitHub fine-grained": f"github_pat_11A{CORE}_xyz",
    "GitLab": f"glpat-{CORE}xyz",
    "Hugging Face": f"hf_{CORE}abcdef",
    "JWT": f"eyJhbGciOiJIUzI1NiJ9.{CORE}.sig",
    "random 32": f"{CORE}0123456789abcdefghij",
    "percent-encoded": quote(f"ghp_{CORE}abc+/def", safe=""),
}
TOKEN_SCHEMES = ["https", "git+https", "http", "postgresql"]

# What urllib strips before it parses: the password survives a line break in the text.
BREAKS = {
    "YAML literal block": f"https://u:\n{CORE}@h.example",
    "tab": f"https://u:{CORE}\t@h.example",
    "CRLF in the token user": f"https://ghp_{CORE}\r\nabcdefghijkl@github.com/o/r",
}


def _sees_a_credential(uri: str) -> bool:
    """What the URL library (and so every client) reads: a password, or a user name."""
    parts = urlsplit(uri)
    return bool(parts.password or parts.username)


def _leaks(text: str) -> bool:
    return CORE in text or quote(CORE) in text


@pytest.mark.parametrize("scheme", TOKEN_SCHEMES)
def test_a_token_as_the_user_name_is_found_and_masked(scheme):
    failures = []
    for label, token in TOKENS.items():
        uri = f"{scheme}://{token}@h.example/o/r"
        assert _sees_a_credential(uri)
        for text in (uri, f"clone failed: {uri} (403)", json.dumps({"u": uri})):
            found = find_secret(text)
            if found is None or _leaks(found) or _leaks(redact(text)):
                failures.append(f"{label}: {text!r} -> {redact(text)!r}")
    assert failures == []


def test_a_password_with_a_quote_or_a_brace_is_found_and_masked_in_every_writer_form():
    """As given, in a sentence, and as JSON and YAML write it (escaped, doubled quotes)."""
    failures = []
    for label, uri in odd_passwords():
        assert _sees_a_credential(uri), uri
        forms = [uri, f"cannot reach {uri}", json.dumps({"u": uri}), yaml.safe_dump({"u": uri})]
        for text in forms:
            found = find_secret(text)  # what the gate's message shows
            if found is None or _leaks(found) or _leaks(redact(text)):
                failures.append(f"{label}: {text!r} -> {redact(text)!r}")
    assert failures == []


@pytest.mark.parametrize("name", ["authorization", "Authorization", "x-authorization"])
def test_an_authorization_parameter_is_a_credential(name):
    text = f"https://h.example/api?{name}=Bearer%20{CORE}&a=1"
    assert find_secret(text) is not None and not _leaks(redact(text))


@pytest.mark.parametrize("label", BREAKS)
def test_the_gate_reads_a_value_as_urllib_does(label):
    """A line break inside the URI (a YAML block scalar) is removed by urllib, which then
    sends the password: the gate refuses it, and its message holds no part of it."""
    uri = BREAKS[label]
    assert _sees_a_credential(uri)
    with pytest.raises(ConfigError, match="holds a credential") as err:
        refuse_secrets([("logger.tracking_uri", uri)])
    assert not _leaks(str(err.value))


GATE_CASES = {
    "quote in the password": "https://u:" + CORE + "'x@mlflow.example",
    "brace in the password": "https://u:" + CORE + "{x@mlflow.example:5000",
    "token as user": f"https://ghp_{CORE}abcdefghijklmnopqrstu@mlflow.example",
    "token as user, git+https": f"git+https://glpat-{CORE}xyz@gitlab.example/o/r",
    "YAML literal block": f"https://u:\n{CORE}@mlflow.example",
}


@pytest.mark.parametrize("case", GATE_CASES)
def test_the_command_line_gate_refuses_them(case, monkeypatch, capsys):
    """Through the real gate (the composed config, the value from the environment)."""
    monkeypatch.setenv("ATTACK_URI", GATE_CASES[case])
    args = ["dataset=digits", "logger=mlflow", "logger.tracking_uri=${oc.env:ATTACK_URI}"]
    with pytest.raises(ConfigError, match="logger.tracking_uri holds a credential") as err:
        train_cli.check_overrides(args)
    assert not _leaks(str(err.value))


@pytest.mark.parametrize(
    "text",
    [
        "http://alice@mlflow.example:5000",
        "ssh://git@github.com/o/r.git",
        "https://oauth2@gitlab.example/o/r.git",
        "https://firstname.lastname2024@corp.example/",  # an e-mail-like user name
        "https://12345678901234567890@h.example/",  # a numeric account id
        '["https://h.example","u:x@y"]',  # a JSON list: the "@" is another item's
        "[https://h.example, u:x@y]",
        "https://h.example/'a'@b",  # a quote in a path
        "https://h.example/?code_path=x&authorization_code_ttl=3",
    ],
)
def test_they_bring_no_false_positive(text):
    assert find_secret(text) is None and redact(text) == text


@pytest.mark.parametrize(
    "args",
    [
        ["logger=mlflow", "logger.tracking_uri=http://mlflow-user@mlflow.example:5000"],
        ["dataset=image_folder", "dataset.root=/data/ghp_tokens/authorization/x"],
    ],
)
def test_the_gate_lets_user_names_and_paths_through(args):
    train_cli.check_overrides(
        [*args, "dataset=digits"] if "dataset=image_folder" not in args else args
    )


# ------------------------------------------------------------------------ --resume
def _sweep_folder(tmp_path: Path, task: list[str], hydra: list[str] = ()) -> Path:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    saved = {
        "hydra": {
            "callbacks": {"g": {"_target_": "tripletlab.credentials.SecretGate"}},
            "overrides": {"hydra": ["hydra.mode=MULTIRUN", *hydra], "task": task},
        }
    }
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(saved))
    return sweep


# (replayed task overrides, the current command's overrides, MLFLOW_TRACKING_URI)
RESUME_CASES = {
    "a prefix of the environment's URI (another host)": (
        ["logger=mlflow", "logger.tracking_uri=https://mlflow.corp.co"],
        [],
        "https://mlflow.corp.com",
    ),
    "the environment's host name cut short": (
        ["logger=mlflow", "logger.tracking_uri=https://mlflow"],
        [],
        "https://mlflow.corp.com:5000",
    ),
    "inside a value of the command": (
        ["logger=mlflow", "logger.tracking_uri=http://evil.example"],
        ["dataset.root=http://evil.example.org/data"],
        None,
    ),
    "through an interpolation of another key": (
        [
            *("dataset=image_folder", "dataset.root=https://evil.example", "logger=mlflow"),
            "logger.tracking_uri=${dataset.root}",
        ],
        [],
        None,
    ),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_names_an_endpoint_only_exactly(case, tmp_path, monkeypatch, capsys):
    task, given, env_uri = RESUME_CASES[case]
    sweep = _sweep_folder(tmp_path, task)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN", "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    if env_uri:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", CORE)
    assert sweep_cli.main(["--dry-run", "--resume", str(sweep), *given]) == 1
    err = capsys.readouterr().err
    assert "error: --resume replays" in err and "MLFLOW_TRACKING_PASSWORD" in err, err
    assert not _leaks(err)
    # The same endpoint, named exactly (another case, a trailing "/"), is the user's own.
    uri = next(u for line in task for u in [line.partition("=")[2]] if "://" in u)
    monkeypatch.setenv(
        "MLFLOW_TRACKING_URI", uri.upper().split("://")[0] + "://" + uri.split("://")[1] + "/"
    )
    assert sweep_cli.main(["--dry-run", "--resume", str(sweep)]) == 0
    capsys.readouterr()
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == CORE


def test_an_environment_variable_that_is_not_set_is_one_message(monkeypatch):
    """``${oc.env:...}``, the way a URI reaches the config without its secret, when the
    variable is not set: one message naming the key and the variable, not a traceback."""
    monkeypatch.delenv("ATTACK_UNSET", raising=False)
    args = ["dataset=digits", "logger=mlflow", "logger.tracking_uri=${oc.env:ATTACK_UNSET}"]
    with pytest.raises(ConfigError, match="logger.tracking_uri.*ATTACK_UNSET"):
        train_cli.check_overrides(args)


# A secret outside any URI, at a key named like one: Hydra writes hydra.job.env_set into
# .hydra/hydra.yaml and multirun.yaml.
SECRET_VARIABLES = ["MLFLOW_TRACKING_PASSWORD", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY"]
SECRET_VALUES = [CORE, f"{CORE}+/Ab==", f"p'{CORE} x"]


@pytest.mark.parametrize("variable", [*SECRET_VARIABLES, "DATABRICKS_TOKEN", "HF_TOKEN"])
def test_a_secret_in_hydra_job_env_set_is_refused(variable):
    from tests.helpers import compose
    from tripletlab.credentials import refuse_config

    for value in SECRET_VALUES:
        quoted = "'" + value.replace("'", "\\'") + "'"
        cfg = compose([f"+hydra.job.env_set.{variable}={quoted}"], return_hydra_config=True)
        with pytest.raises(ConfigError, match=f"env_set.{variable} holds a credential") as err:
            refuse_config(cfg)
        assert not _leaks(str(err.value))


def test_the_command_line_gate_refuses_a_secret_in_env_set():
    args = ["dataset=digits", f"+hydra.job.env_set.MLFLOW_TRACKING_TOKEN={CORE}"]
    with pytest.raises(ConfigError, match="holds a credential"):
        train_cli.check_overrides(args)


@pytest.mark.parametrize(
    "setting",
    [
        "+hydra.job.env_set.GOOGLE_APPLICATION_CREDENTIALS=/keys/sa.json",
        "+hydra.job.env_set.SSH_KEY='~/.ssh/id_ed25519'",
        "+hydra.job.env_set.TF_USE_LEGACY_KEY=true",
        "+hydra.job.env_set.PGPASSFILE=./pgpass",
        "+hydra.job.env_set.MLFLOW_TRACKING_TOKEN=",
        "+hydra.job.env_set.TOKENIZERS_PARALLELISM=false",
    ],
)
def test_env_set_paths_and_flags_stay_allowed(setting):
    train_cli.check_overrides(["dataset=digits", setting])


# A database URI with no host in its authority whose driver still connects to a server
# named in its query (libpq's host/hostaddr, the MySQL drivers' host).
QUERY_HOSTS = [
    ("postgresql:///optuna?host=db.evil.example", "PGPASSWORD"),
    ("postgresql+psycopg2://@/optuna?sslmode=require&host=db.evil.example", "PGPASSWORD"),
    ("postgresql:///optuna?hostaddr=203.0.113.9", "PGPASSWORD"),
    ("mysql+pymysql:///optuna?host=db.evil.example", "MYSQL_PWD"),
]


@pytest.mark.parametrize("storage, variable", QUERY_HOSTS)
def test_resume_sees_a_server_named_in_the_query(storage, variable, tmp_path, monkeypatch, capsys):
    sweep = _sweep_folder(
        tmp_path, ["hparams_search=optuna"], [f"hydra.sweeper.storage='{storage}'"]
    )
    monkeypatch.setenv(variable, CORE)
    assert sweep_cli.main(["--dry-run", "--resume", str(sweep)]) == 1
    err = capsys.readouterr().err
    assert "error: --resume replays" in err and variable in err and not _leaks(err), err


def test_a_socket_in_the_query_is_local(tmp_path, monkeypatch, capsys):
    storage = "postgresql:///optuna?host=/var/run/postgresql"
    sweep = _sweep_folder(
        tmp_path, ["hparams_search=optuna"], [f"hydra.sweeper.storage='{storage}'"]
    )
    monkeypatch.setenv("PGPASSWORD", CORE)
    assert sweep_cli.main(["--dry-run", "--resume", str(sweep)]) == 0
    assert storage in capsys.readouterr().err


# How a sweep picks among config options: each makes the args for "options" in "folder".
GROUP_SWEEPS = {
    "list sweep": lambda folder, options: [f"experiment={','.join(options)}"],
    "Optuna choice on the command line": lambda folder, options: [
        "hparams_search=optuna",
        f"+hydra.sweeper.params.experiment=choice({','.join(options)})",
    ],
    "Optuna choice in a YAML": lambda folder, options: (
        (folder / "hparams_search").mkdir(exist_ok=True),
        (folder / "hparams_search" / "groups.yaml").write_text(
            "# @package _global_\ndefaults:\n  - optuna\nhydra:\n  sweeper:\n    params:\n"
            f"      experiment: choice({','.join(options)})\n"
        ),
        ["hparams_search=groups"],
    )[-1],
}


@pytest.mark.parametrize("position", [1, 2])
@pytest.mark.parametrize("sweep", GROUP_SWEEPS)
def test_a_credential_in_a_later_option_of_a_swept_group_is_refused_first(
    sweep, position, tmp_path
):
    """``experiment=a,b,c`` composes ``a`` alone; ``b``'s file is read by a later job (an
    Optuna trial). The gate composes each option, so the sweep is refused before Hydra
    makes its folder or Optuna its study."""
    folder = tmp_path / "conf"
    (folder / "experiment").mkdir(parents=True)
    for name in ("plain_a", "plain_b"):
        (folder / "experiment" / f"{name}.yaml").write_text("# @package _global_\nseed: 3\n")
    leak = {
        "defaults": [{"override /logger": "mlflow"}],
        "logger": {"experiment": GATE_CASES["token as user"]},
    }
    (folder / "experiment" / "leak.yaml").write_text("# @package _global_\n" + yaml.safe_dump(leak))
    options = ["plain_a", "plain_b"]
    args = ["-m", "-cd", str(folder), "dataset=digits"]
    train_cli.check_overrides([*args, *GROUP_SWEEPS[sweep](folder, options)])
    options.insert(position, "leak")
    with pytest.raises(ConfigError, match="logger.experiment holds a credential") as err:
        train_cli.check_overrides([*args, *GROUP_SWEEPS[sweep](folder, options)])
    assert not _leaks(str(err.value))


# The value of a credential of the environment, taken into a config by ${oc.env:...}
# (an experiment file someone gave you), or into a library's message.
ENV_SECRET_NAMES = ["MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "HF_TOKEN", "PGPASSWORD"]
ENV_SECRET_USES = {
    "as the experiment name": "${oc.env:%s}",
    "inside a longer name": "run-${oc.env:%s}-x",
}


@pytest.mark.parametrize("use", ENV_SECRET_USES)
@pytest.mark.parametrize("variable", ENV_SECRET_NAMES)
def test_the_value_of_an_environment_credential_is_refused_in_any_key(
    variable, use, tmp_path, monkeypatch
):
    monkeypatch.setenv(variable, f"{CORE}+/x")
    folder = tmp_path / "conf" / "experiment"
    folder.mkdir(parents=True)
    given = {
        "defaults": [{"override /logger": "mlflow"}],
        "logger": {"experiment": ENV_SECRET_USES[use] % variable},
    }
    (folder / "shared.yaml").write_text("# @package _global_\n" + yaml.safe_dump(given))
    args = ["-cd", str(folder.parent), "experiment=shared", "dataset=digits"]
    with pytest.raises(
        ConfigError, match=f"logger.experiment holds the value of \\${variable}"
    ) as err:
        train_cli.check_overrides(args)
    assert not _leaks(str(err.value))


@pytest.mark.parametrize("variable", ENV_SECRET_NAMES)
def test_the_value_of_an_environment_credential_is_masked_by_every_writer(
    variable, monkeypatch, tmp_path
):
    import logging

    from tripletlab.io_utils import atomic_write_text

    value = f"{CORE}+/x"
    monkeypatch.setenv(variable, value)
    text = f"request failed: header Authorization: Bearer {value} ({quote(value, safe='')})"
    assert not _leaks(redact(text)) and "request failed" in redact(text)
    from tripletlab.credentials import install_log_redaction

    install_log_redaction()
    record = logging.getLogRecordFactory()("attack", logging.WARNING, "f", 1, "%s", (text,), None)
    assert not _leaks(record.getMessage())
    atomic_write_text(tmp_path / "x.txt", text)
    assert not _leaks((tmp_path / "x.txt").read_text())


@pytest.mark.parametrize(
    "variable, value",
    [
        ("PWD", "/work/main"),  # a path
        ("GOOGLE_APPLICATION_CREDENTIALS", "/keys/sa.json"),
        ("TOKENIZERS_PARALLELISM", "false"),  # a flag
        ("HF_TOKEN", "short"),  # too short to be told from ordinary words
        ("MLFLOW_TRACKING_URI", "https://mlflow.example"),  # not named like a secret
    ],
)
def test_environment_values_that_are_no_secret_stay(variable, value, monkeypatch):
    monkeypatch.setenv(variable, value)
    text = f"folder {value} with false short https://mlflow.example"
    assert redact(text) == text
    train_cli.check_overrides(
        ["dataset=image_folder", f"dataset.root={value if value.startswith('/') else '/d'}"]
    )
