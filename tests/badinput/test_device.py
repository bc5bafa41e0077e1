"""Bad inputs to `edgekit device serve|emulate|tracker|list|info` (and the standalone board server):
one `edgekit: error:` line, exit 2, nothing written; a server never binds beyond loopback
without --allow-remote (TVM RPC has no authentication and runs uploaded native code)."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.badinput.harness import Case, check_api, check_cli, check_error_line

pytest.importorskip("tvm")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fill(argv, tmp_path: Path):
    """FREE: a port nobody listens on; OUT: the test's folder."""
    return [str(a).replace("FREE", str(free_port())).replace("OUT", str(tmp_path)) for a in argv]


SERVE_CASES = [
    Case("serve_all_interfaces", ["serve", "--host", "0.0.0.0"], ["0.0.0.0", "loopback", "--allow-remote"]),
    Case("serve_ipv6_any", ["serve", "--host", "::"], ["::", "--allow-remote"]),
    Case("serve_lan_address", ["serve", "--host", "192.168.1.7"], ["192.168.1.7", "--allow-remote"]),
    Case("serve_public_address", ["serve", "--host", "8.8.8.8", "--port", "9090"], ["8.8.8.8", "authentication"]),
    Case("serve_empty_host", ["serve", "--host", ""], ["--host"]),
    Case("serve_unresolvable_host", ["serve", "--host", "no-such-host.invalid"], ["no-such-host.invalid"]),
    Case("serve_port_negative", ["serve", "--port", "-1"], ["--port", "-1"]),
    Case("serve_port_too_big", ["serve", "--port", "70000"], ["--port", "70000"]),
    Case("serve_port_text", ["serve", "--port", "http"], ["--port", "http"]),
    Case("serve_port_end_below", ["serve", "--port", "9090", "--port-end", "9000"], ["--port-end", "9000"]),
    Case("serve_port_end_too_big", ["serve", "--port-end", "99999"], ["--port-end"]),
    Case("serve_tracker_no_port", ["serve", "--tracker", "10.0.0.2"], ["--tracker", "HOST:PORT"]),
    Case("serve_tracker_port_zero", ["serve", "--tracker", "127.0.0.1:0"], ["--tracker"]),
    Case("serve_tracker_port_too_big", ["serve", "--tracker", "127.0.0.1:99999"], ["--tracker"]),
    Case("serve_tracker_unreachable", ["serve", "--tracker", "127.0.0.1:FREE", "--key", "k"],
         ["--tracker", "unreachable"]),
    Case("serve_key_with_space", ["serve", "--key", "rk 3588"], ["--key", "rk 3588"]),
    Case("serve_key_with_colon", ["serve", "--key", "server:rk"], ["--key"]),
    Case("serve_unknown_flag", ["serve", "--bind", "0.0.0.0"], ["--bind"]),
]

EMULATE_CASES = [
    Case("emulate_all_interfaces", ["emulate", "--host", "0.0.0.0"], ["0.0.0.0", "--allow-remote"]),
    Case("emulate_lan_address", ["emulate", "--host", "10.1.2.3", "--port", "0"], ["10.1.2.3", "--allow-remote"]),
    Case("emulate_port_negative", ["emulate", "--port", "-5"], ["--port", "-5"]),
    Case("emulate_port_text", ["emulate", "--port", "x"], ["--port"]),
    Case("emulate_bad_tracker", ["emulate", "--tracker", "nowhere"], ["--tracker", "HOST:PORT"]),
]

TRACKER_CASES = [
    Case("tracker_all_interfaces", ["tracker", "--host", "0.0.0.0"], ["0.0.0.0", "--allow-remote"]),
    Case("tracker_lan_address", ["tracker", "--host", "172.16.0.1", "--port", "9190"], ["172.16.0.1", "loopback"]),
    Case("tracker_port_zero", ["tracker", "--port", "0"], ["--port", "1-65534"]),
    Case("tracker_port_negative", ["tracker", "--port", "-9190"], ["--port"]),
    Case("tracker_port_too_big", ["tracker", "--port", "65536"], ["--port", "65536"]),
]

LIST_CASES = [
    Case("list_no_tracker", ["list"], ["--tracker"]),
    Case("list_tracker_no_port", ["list", "--tracker", "localhost"], ["--tracker", "HOST:PORT"]),
    Case("list_tracker_bad_port", ["list", "--tracker", "localhost:abc"], ["--tracker"]),
    Case("list_tracker_unreachable", ["list", "--tracker", "127.0.0.1:FREE"], ["tracker", "unreachable"]),
    Case("list_timeout_zero", ["list", "--tracker", "127.0.0.1:9190", "--timeout", "0"], ["--timeout"]),
    Case("list_timeout_negative", ["list", "--tracker", "127.0.0.1:9190", "--timeout", "-3"], ["--timeout"]),
    Case("list_timeout_text", ["list", "--tracker", "127.0.0.1:9190", "--timeout", "soon"], ["--timeout", "soon"]),
    Case("list_timeout_inf", ["list", "--tracker", "127.0.0.1:9190", "--timeout", "inf"], ["--timeout"]),
    Case("list_json_file_no_folder", ["list", "--tracker", "127.0.0.1:FREE", "--json-file", "OUT/no/l.json"],
         ["--json-file", "does not exist"]),
    Case("list_json_file_is_folder", ["list", "--tracker", "127.0.0.1:FREE", "--json-file", "OUT"],
         ["--json-file", "folder"]),
]

INFO_CASES = [
    Case("info_nothing", ["info"], ["--device", "--tracker"]),
    Case("info_device_and_tracker", ["info", "--device", "127.0.0.1:1", "--tracker", "127.0.0.1:2"],
         ["--device", "--tracker"]),
    Case("info_tracker_without_key", ["info", "--tracker", "127.0.0.1:FREE"], ["--key"]),
    Case("info_device_no_port", ["info", "--device", "board"], ["--device", "HOST:PORT"]),
    Case("info_device_port_zero", ["info", "--device", "127.0.0.1:0"], ["--device"]),
    Case("info_device_unreachable", ["info", "--device", "127.0.0.1:FREE"], ["unreachable"]),
    Case("info_tracker_unreachable", ["info", "--tracker", "127.0.0.1:FREE", "--key", "k"], ["unreachable"]),
    Case("info_timeout_zero", ["info", "--device", "127.0.0.1:FREE", "--timeout", "0"], ["--timeout"]),
    Case("info_timeout_nan", ["info", "--device", "127.0.0.1:FREE", "--timeout", "nan"], ["--timeout"]),
    Case("info_json_file_no_folder", ["info", "--device", "127.0.0.1:FREE", "--json-file", "OUT/no/i.json"],
         ["--json-file", "does not exist"]),
    Case("device_unknown_action", ["flash"], ["flash"]),
]


@pytest.mark.parametrize("case", [c.param() for c in SERVE_CASES + EMULATE_CASES + TRACKER_CASES + LIST_CASES
                                  + INFO_CASES])
def test_device_verb_refuses_bad_input(tmp_path, capsys, case):
    check_cli(["device", *fill(case.argv, tmp_path)], capsys, tmp_path, case.names)


def test_serve_refuses_a_port_in_use(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        check_cli(["device", "serve", "--port", str(port)], capsys, tmp_path, [f"127.0.0.1 --port {port}",
                                                                                 "cannot listen"])


# The standalone board server (`python -m edgekit.device.serve`, no edgekit CLI around it)
STANDALONE_CASES = [
    Case("standalone_all_interfaces", ["--host", "0.0.0.0"], ["0.0.0.0", "--allow-remote"]),
    Case("standalone_port_text", ["--port", "x"], ["--port"]),
    Case("standalone_bad_tracker", ["--tracker", "nowhere"], ["--tracker"]),
]


@pytest.mark.parametrize("case", [c.param() for c in STANDALONE_CASES])
def test_standalone_server_uses_the_edgekit_error_line(case):
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "edgekit.device.serve", *case.argv], capture_output=True,
                         text=True, timeout=60, cwd=root)
    assert out.returncode == 2, out.stderr
    check_error_line(out.stderr, case.names)
    assert "edgekit-device: error" not in out.stderr


@pytest.mark.parametrize("start", ["start_native", "start_emulated"])
@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.0.10"])
def test_device_process_api_refuses_remote_bind(tmp_path, start, host):
    from edgekit.device import emulate

    check_api(lambda: getattr(emulate, start)(host, 0), tmp_path, [host, "--allow-remote"])


def test_allowed_remote_bind_warns_on_stderr(capsys):
    from edgekit.device.serve import check_bind, is_loopback

    check_bind("0.0.0.0", True)
    err = capsys.readouterr().err
    assert err.startswith("edgekit: warning:") and "no authentication" in err and "0.0.0.0" in err
    check_bind("127.0.0.1", False)
    check_bind("localhost", False)
    check_bind("::1", False)
    assert capsys.readouterr().err == ""
    assert is_loopback("127.0.0.2") and not is_loopback("0.0.0.0") and not is_loopback("::")


def test_serve_help_explains_the_bind_default(capsys):
    from edgekit.cli import main

    with pytest.raises(SystemExit):
        main(["device", "serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default 127.0.0.1" in text and "--allow-remote" in text and "no authentication" in text
