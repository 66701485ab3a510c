"""The web demo's defences that need no browser: only loopback Host headers are served (DNS rebinding), and seeds
outside what a torch.Generator takes are refused in one line before any work."""

from __future__ import annotations

import http.client
import socket

import pytest

from guided_diffusers.app.chain import MAX_SEED, check_seed

gr = pytest.importorskip("gradio")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, host_header: str) -> tuple[int, str]:
    # A guard against a server that never answers, not a budget: a loopback GET takes well under a second.
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.putrequest("GET", "/", skip_host=True)
        connection.putheader("Host", host_header)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def test_only_loopback_host_headers_are_served(tmp_path):
    from guided_diffusers.app.web import is_loopback_host, launch

    port = _free_port()
    for header in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", f"LOCALHOST:{port}"):
        assert is_loopback_host(header, port), header
    for header in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}", f"127.0.0.1:{port + 1}",
                   "127.0.0.1", "", f"[::ffff:8.8.8.8]:{port}"):
        assert not is_loopback_host(header, port), header
    demo = launch(str(tmp_path / "no_pipeline"), port=port, prevent_thread_lock=True, quiet=True)
    try:
        status, body = _get(port, "evil.example")
        assert status == 400 and "expected a request to this machine's loopback address" in body and "evil.example" in body
        assert body.count("\n") == 1
        assert _get(port, f"evil.example:{port}")[0] == 400
        for header in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            status, body = _get(port, header)
            assert status == 200 and "<html" in body.lower(), header
    finally:
        demo.close()


@pytest.mark.parametrize("seed", [0, 7, 3.0, MAX_SEED])
def test_seeds_a_generator_takes_are_accepted(seed):
    assert check_seed(seed) == int(seed)


@pytest.mark.parametrize(
    "seed,message",
    [
        (2**70, "expected the seed to be from 0 to 2**64 - 1, got 1180591620717411303424"),
        (MAX_SEED + 1, "from 0 to 2**64 - 1"),
        (-1, "expected the seed to be from 0 to 2**64 - 1, got -1"),
        (1.5, "expected the seed to be a whole number from 0 to 2**64 - 1, got 1.5"),
        (float("nan"), "whole number"),
        (float("inf"), "whole number"),
        ("12", "whole number"),
        (True, "whole number"),
    ],
)
def test_bad_seeds_get_one_line_before_any_work(seed, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(").replace(")", r"\)")) as error:
        check_seed(seed)
    assert "\n" not in str(error.value)


def test_the_page_refuses_a_huge_seed_before_building_a_chain(monkeypatch):
    from guided_diffusers.app import web

    def no_work(*args, **kwargs):
        raise AssertionError("a chain was started")

    monkeypatch.setattr(web, "_new_session", no_work)
    monkeypatch.setattr(web, "pipeline_message", no_work)
    values = ["some/folder", "0", 0.0, 1.0, "ddpm", 5, 0.0, 1, 2**70]  # the page's settings, the seed last
    with pytest.raises(gr.Error, match=r"expected the seed to be from 0 to 2\*\*64 - 1, got 1180591620717411303424"):
        web._run("generate", None, 1, *values)
