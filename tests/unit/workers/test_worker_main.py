"""The worker command before it touches the network: help and configuration errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common.spec import load_spec
from services.workers.__main__ import build_parser, configure, main
from services.workers.service import client_overrides
from services.workers.settings import WorkerSettings

SPECS = Path(__file__).resolve().parents[3] / "models" / "specs"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "RDV_WORKER_MODEL",
        "RDV_WORKER_COHOSTED",
        "RDV_WORKER_OPS_PORT",
        "RDV_KAFKA_CLIENT_CONFIG",
    ):
        monkeypatch.delenv(var, raising=False)


def test_help_documents_the_inline_form(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "echo:name=fast,role=champion,endpoints=demo,latency_ms=2" in out
    assert "Runtimes: echo, embed, failing, latency" in out


@pytest.mark.parametrize(
    ("argv", "env", "match"),
    [
        ([], {}, "no model: give --model SPEC or set RDV_WORKER_MODEL"),
        (["--model", "echo:name=a"], {}, "invalid model spec 'echo:name=a'"),
        (
            ["--model", "echo:name=a,role=champion,endpoints=demo,x=1"],
            {},
            "params for runtime 'echo'",
        ),
        (["--model", str(SPECS / "nope.yaml")], {}, "cannot read model spec"),
        (["--model", str(SPECS / "fast.yaml")], {"RDV_WORKER_OPS_PORT": "99999"}, "ops_port"),
        (
            ["--model", str(SPECS / "fast.yaml")],
            {"RDV_KAFKA_CLIENT_CONFIG": "{oops"},
            "invalid settings",
        ),
        (
            ["--model", str(SPECS / "fast.yaml")],
            {"RDV_WORKER_TOPICS_FILE": "/nonexistent/topics.yaml"},
            "cannot read topics file",
        ),
        (
            ["--model", str(SPECS / "fast.yaml"), "--model", str(SPECS / "fast.yaml")],
            {},
            "cannot host one model twice",
        ),
        (
            ["--model", str(SPECS / "fast.yaml"), "--model", str(SPECS / "smol.yaml")],
            {},
            "a generative model runs in a process of its own",
        ),
        (
            ["--model", str(SPECS / "fast.yaml")],
            {"RDV_WORKER_COHOSTED": "not a list"},
            "cohosted",
        ),
    ],
)
def test_config_errors_exit_2_with_one_line(
    argv: list[str],
    env: dict[str, str],
    match: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    assert main(argv) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("python -m services.workers: [bad_config]")
    assert match in err


def test_flags_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RDV_WORKER_MODEL", "echo:name=from-env,role=canary,endpoints=demo")
    monkeypatch.setenv("RDV_WORKER_OPS_PORT", "9100")
    monkeypatch.setenv("RDV_KAFKA_TOPIC_PREFIX", "p.")

    from_env = configure(build_parser().parse_args([]))
    flagged = configure(
        build_parser().parse_args(["--model", str(SPECS / "fast.yaml"), "--ops-port", "0"])
    )

    assert (from_env.spec.name, from_env.settings.ops_port) == ("from-env", 9100)
    assert (flagged.spec.name, flagged.settings.ops_port) == ("fast", 0)
    assert flagged.topics.requests == "p.rdv.requests"
    assert not flagged.model.ready  # built, not loaded: loading waits for the broker


@pytest.mark.parametrize(
    ("role", "batched"),
    [
        ("champion", False),
        ("challenger", False),
        ("detector", False),
        ("canary", True),
        ("decoy", True),
    ],
)
def test_only_models_off_the_answer_path_read_and_write_in_batches(
    role: str, batched: bool
) -> None:
    spec = load_spec(f"echo:name=m,role={role},endpoints=demo")
    reading, writing = client_overrides([spec], WorkerSettings(off_path_wait_ms=400))
    assert reading["auto.offset.reset"] == "latest"
    if batched:
        assert (reading["fetch.wait.max.ms"], reading["fetch.min.bytes"]) == ("400", "65536")
        assert writing == {"linger.ms": "40"}
    else:
        assert "fetch.wait.max.ms" not in reading
        assert writing == {}
    off = client_overrides([spec], WorkerSettings(off_path_wait_ms=0))
    assert off == ({"auto.offset.reset": "latest"}, {})


def test_co_hosted_models_read_in_batches_only_when_every_one_is_off_the_answer_path() -> None:
    canary = load_spec("echo:name=c,role=canary,endpoints=demo")
    champion = load_spec("echo:name=m,role=champion,endpoints=demo")
    settings = WorkerSettings(off_path_wait_ms=400)
    assert client_overrides([canary, champion], settings)[1] == {
        "linger.ms": "1",
        "batch.num.messages": "2",
    }
    decoy = load_spec("echo:name=d,role=decoy,endpoints=demo")
    assert client_overrides([canary, decoy], settings)[1] == {"linger.ms": "40"}


def test_a_co_hosted_answering_set_lingers_so_its_scores_share_a_produce_request() -> None:
    specs = [load_spec(f"echo:name={n},role=champion,endpoints=demo") for n in ("a", "b")]
    writing = client_overrides(specs, WorkerSettings())[1]
    assert writing == {"linger.ms": "1", "batch.num.messages": "2"}
    assert client_overrides(specs[:1], WorkerSettings())[1] == {}  # one model: at once
    assert client_overrides(specs, WorkerSettings(cohost_linger_ms=0))[1] == {}
