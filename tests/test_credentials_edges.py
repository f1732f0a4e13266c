"""Credentials edge cases found by mutation testing (issue 27): each test fails on the
realistic one-line bug named in its docstring."""

from __future__ import annotations

import logging
import sys

import pytest

from tripletlab.credentials import detection, gate, redaction
from tripletlab.errors import ConfigError

# Passwords with an unencoded "@" (urllib splits the authority at its last "@").
AT_IN_PASSWORD = [
    ("https://user:p@ss-w0rd@host/x", "https://user:***@host/x"),
    ("postgres://bob:s3cr@t@db:5432/exp?x=1", "postgres://bob:***@db:5432/exp?x=1"),
    ("mlflow+https://me:a@b@c@tracker:5000", "mlflow+https://me:***@tracker:5000"),
]


@pytest.mark.parametrize(("uri", "masked"), AT_IN_PASSWORD)
def test_a_password_holding_an_at_sign_is_masked_whole(uri, masked):
    """Bug: the userinfo cut at the first "@" (``index``) leaves the password's tail."""
    assert detection.mask(uri) == masked
    assert detection.find_secret(f"see {uri} now") == masked


@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("https://alice%3Ahunter2@host/x", "https://***@host/x"),
        ("http://bob%3ap4ss@10.0.0.1:8080/", "http://***@10.0.0.1:8080/"),
    ],
)
def test_a_userinfo_with_an_encoded_colon_is_masked(uri, masked):
    """Bug: the decoded userinfo split at anything but ":" finds no password."""
    assert detection.mask(uri) == masked


def test_a_secret_in_hydras_settings_is_reported_with_its_hydra_key():
    """Bug: the ``hydra.`` prefix dropped, the message names a key the user never wrote."""
    hydra_cfg = {"launcher": {"tracking_uri": "https://u:hunter22@mlflow.example"}}
    with pytest.raises(ConfigError) as err:
        gate.refuse_config({"model": {"embedding_size": 8}}, hydra_cfg)
    assert str(err.value).startswith("hydra.launcher.tracking_uri holds a credential (")
    assert "hunter22" not in str(err.value)


def test_the_warning_about_a_masked_credential_is_given_once(caplog, monkeypatch):
    """A record that holds a credential, from a logger whose name holds it too: the warning
    that names that writer holds it (masked) and must not warn again about itself. Bug: the
    re-entry guard read from the wrong place, a second warning about the first."""
    monkeypatch.setattr(redaction, "_warned", set())
    redaction.install_log_redaction()
    name = "https://svc:hunter22@tracker.example"
    with caplog.at_level(logging.WARNING):
        logging.getLogger(name).warning("pushed to %s", name)
    ours = [r for r in caplog.records if r.name == "tripletlab"]
    assert len(ours) == 1, [r.getMessage() for r in ours]
    assert "hunter22" not in ours[0].getMessage()
    assert "a credential reached a log message" in ours[0].getMessage()
    # It shows where the credential was, masked (bug: only "***").
    assert "written masked (https://svc:***@tracker.example)" in ours[0].getMessage()


def test_an_environment_secret_at_the_very_start_of_a_text_is_masked(monkeypatch):
    """Bug: the search for the value's copies stops at a find at position 0."""
    monkeypatch.setenv("MY_API_TOKEN", "s3cr3tvalue99")
    assert detection.mask("s3cr3tvalue99 was sent") == "*** was sent"
    assert detection.mask("s3cr3tvalue99") == "***"


def test_an_encoded_name_value_pair_after_another_parameter_is_masked_whole():
    """``token%3D...`` (the "=" encoded) as the second parameter. Bug: its span's end
    computed from the wrong side of the parameter's start, the value's tail left."""
    uri = "https://h/p?a=1&page=2&token%3Dhunter22xyz"
    assert detection.mask(uri) == "https://h/p?a=1&page=2&***"


@pytest.mark.parametrize("password", ["p'w0rd", "p{w0rd}", 'p"w0rd'])
def test_a_password_holding_a_quote_or_a_brace_is_masked(password):
    """urllib reads "https://u:p'w@h" as user "u", password "p'w". Bug: the authority
    read past the quote dropped (a TypeError, or the password's tail shown)."""
    assert detection.mask(f"https://u:{password}@h/x") == "https://u:***@h/x"


def test_a_uri_whose_separator_is_encoded_is_masked_after_its_scheme():
    """A sweep job folder's name (every "/" written %2F). Bug: read as a plain URI, whose
    "%40" hides the "@": nothing found."""
    assert detection.mask("https%3A%2F%2Fbob%3Ahunter22%40tracker") == "https%3A%2F%2F***"


def test_a_secret_with_a_slash_is_masked_where_it_appears_encoded_twice():
    """A base64 token holds "/"; a sweep folder name encodes it twice (%252F). Bug: its
    copies encoded keeping "/" (``quote``'s default), the twice-encoded form missed."""
    text = "https://h/?token=Zm9v/YmFy1234 in /runs/Zm9v%252FYmFy1234 and Zm9v%2FYmFy1234"
    assert detection.mask(text) == "https://h/?token=*** in /runs/*** and ***"


@pytest.mark.parametrize("secret", ["hunter22secret", "Zm9v/YmFy+1234"])
def test_a_config_value_holding_an_environment_secret_is_refused_after_other_leaves(
    monkeypatch, secret
):
    """The secret's value, as is or percent-encoded (a base64 "/"), in a leaf that comes
    after a number. Bug: the scan stops at the first non-string leaf; or the encoded form
    keeps "/" (``quote``'s default) and is not recognised."""
    from urllib.parse import quote

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)
    for value in (f"run-{secret}", f"run-{quote(secret, safe='')}"):
        cfg = {"trainer": {"epochs": 3}, "logger": {"experiment": value}}
        with pytest.raises(ConfigError, match=r"^logger\.experiment holds the value of \$"):
            gate.refuse_config(cfg)


URI = "https://svc:hunter22@tracker.example"


def _reached(caplog) -> list[str]:
    return [
        r.getMessage().split(" and was written masked")[0]
        for r in caplog.records
        if r.getMessage().startswith("a credential reached")
    ]


def test_each_writer_warns_once_naming_itself(monkeypatch, caplog, capsys):
    """The standard output, a traceback that ends the process, a structure's keys and a
    log record's stack: masked, and the warning names the writer. Bug: a writer that
    redacts without naming itself (no warning), or a stack dropped."""
    monkeypatch.setattr(redaction, "_warned", set())
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    with caplog.at_level(logging.WARNING, logger="tripletlab"), redaction.redacted_output():
        print(f"pushing to {URI}")
        sys.excepthook(ValueError, ValueError(f"cannot reach {URI}"), None)
        tree = redaction.redact_tree({URI: 1}, "MLflow params")
        logging.getLogger("tests.stack").warning("here", stack_info=True)
    out, err = capsys.readouterr()
    assert "hunter22" not in out + err and "svc:***@" in out and "svc:***@" in err
    assert tree == {"https://svc:***@tracker.example": 1}
    assert _reached(caplog) == [
        "a credential reached the standard output",
        "a credential reached a traceback",
        "a credential reached MLflow params",
    ]
    stacked = [r for r in caplog.records if r.name == "tests.stack"]
    assert stacked[0].stack_info.startswith("Stack (most recent call last)")
