"""Credentials in config URIs are refused, and the message never shows them."""

from __future__ import annotations

import pytest

from tripletlab.credentials import config_strings, find_secret, refuse_secrets
from tripletlab.errors import ConfigError

SENTINEL = "s3ntinel-PW"


@pytest.mark.parametrize(
    "uri, masked",
    [
        (f"http://user:{SENTINEL}@host:5000", "http://user:***@host:5000"),
        (f"postgresql+psycopg2://u:{SENTINEL}@db/optuna", "postgresql+psycopg2://u:***@db/optuna"),
        (f"https://h/f.gz?a=1&token={SENTINEL}", "https://h/f.gz?a=1&token=***"),
        (f"https://h/f.gz?Password={SENTINEL}", "https://h/f.gz?Password=***"),
        (f"see mysql://root:{SENTINEL}@10.0.0.1/x", "mysql://root:***@10.0.0.1/x"),
    ],
)
def test_a_uri_with_a_credential_is_found_and_masked(uri, masked):
    assert find_secret(uri) == masked


@pytest.mark.parametrize(
    "text",
    [
        "sqlite:///outputs/optuna.db",
        "http://user@host:5000",  # a user name alone is not a secret
        "https://host/path?page=2",
        "file:///data/x.gz",
        "no uri at all: a:b@c",
    ],
)
def test_plain_uris_pass(text):
    assert find_secret(text) is None


def test_the_message_names_the_key_and_where_the_secret_goes_never_the_secret():
    cases = {
        "logger.tracking_uri": (f"http://u:{SENTINEL}@h", "MLFLOW_TRACKING_PASSWORD"),
        "hydra.sweeper.storage": (f"postgresql://u:{SENTINEL}@h/db", "PGPASSWORD"),
        "dataset.url": (f"https://h/x.gz?token={SENTINEL}", "dataset.root"),
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


def test_composing_a_config_with_a_credential_fails():
    import tripletlab

    with pytest.raises(ConfigError, match="logger.tracking_uri"):
        tripletlab.compose(["logger=mlflow", f"logger.tracking_uri=https://u:{SENTINEL}@h"])
    with pytest.raises(ConfigError, match="hydra.sweeper.storage"):
        tripletlab.compose(
            ["hparams_search=optuna", f"hydra.sweeper.storage=mysql://u:{SENTINEL}@h/db"],
            return_hydra_config=True,
        )
