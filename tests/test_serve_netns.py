"""`socktop serve --netns` against real network namespaces: per-container series equal `ss` inside them."""

from __future__ import annotations

import subprocess

from namespaces import farm_in_netns, named_netns, needs_root
from test_serve import healthy, samples, scrape, socktop, value


def ss_state(name: str, state: str) -> int:
    """``ip netns exec NAME ss -tanH state STATE``, counted."""
    return len(subprocess.run(["ip", "netns", "exec", name, "ss", "-tanH", "state", state], capture_output=True,
                              text=True, check=True, timeout=60).stdout.splitlines())


@needs_root
def test_serve_exports_each_namespace_as_ss_inside_it_counts() -> None:
    with named_netns() as leaky, named_netns() as quiet, \
            farm_in_netns(leaky, established=4, close_wait=9) as farm, farm_in_netns(quiet, established=6):
        process = socktop("serve", "--netns", f"{leaky},{quiet}", "--listen", "127.0.0.1:0", "--interval", "1")
        try:
            base = healthy(process)
            found = samples(scrape(base)[1])
            close_wait, established = ss_state(leaky, "close-wait"), ss_state(quiet, "established")
        finally:
            process.terminate()
            process.wait(15)
    assert close_wait == 9 and established == 12  # both ends of each pair are in the namespace
    assert value(found, "socktop_container_sockets", container=leaky, kind="netns", state="CLOSE_WAIT") == close_wait
    assert value(found, "socktop_container_sockets", container=quiet, kind="netns", state="ESTABLISHED") == established
    assert value(found, "socktop_container_sockets", container=quiet, state="CLOSE_WAIT") is None
    assert value(found, "socktop_process_sockets", process=f"pid:{farm.pid}", state="CLOSE_WAIT") == close_wait
    assert value(found, "socktop_process_sockets", process=f"pid:{farm.pid}", container=leaky,
                 state="CLOSE_WAIT") == close_wait
    assert value(found, "socktop_sockets", state="CLOSE_WAIT") == close_wait  # its own namespace not asked for


def test_serve_rejects_a_bad_netns_in_one_line() -> None:
    process = socktop("serve", "--netns", "a/b", "--listen", "127.0.0.1:0")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 2 and len(stderr.strip().splitlines()) == 1 and "--netns" in stderr
