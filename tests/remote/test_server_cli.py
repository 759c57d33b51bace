"""The dpmsfs-server command line: one-line errors, documented exit codes, TLS, defaults."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import requests

from remote.http_backend import HttpBackend
from remote.retry import NO_RETRY, Retrier
from tests.remote.serverproc import ADMIN, REPO, ServerProcess, server_cmd, write_tokens


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert text in result.stderr


def test_help_documents_exit_status() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "EXIT STATUS" in result.stdout
    verify_help = run("verify", "--help")
    assert verify_help.returncode == 0 and "EXIT STATUS" in verify_help.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run().returncode == 2
    bad_listen = run("--data", str(tmp_path), "--listen", "nonsense")
    assert_one_line_error(bad_listen, 2, "--listen must be HOST:PORT")


def test_port_in_use_exits_4(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = run(
            "--data",
            str(tmp_path / "d"),
            "--listen",
            f"127.0.0.1:{port}",
            "--tokens",
            str(write_tokens(tmp_path / "t.json")),
        )
    assert_one_line_error(result, 4, "cannot listen")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read tokens file"),
        ("{oops", "not valid JSON"),
        ('{"tokens": {"short": {"role": "tool", "namespaces": ["a"]}}}', "at least 16"),
        ('{"tokens": {"xxxxxxxxxxxxxxxxxxxx": {"role": "root", "namespaces": "*"}}}', "role"),
        (
            '{"tokens": {"xxxxxxxxxxxxxxxxxxxx": {"role": "tool", "namespaces": [".."]}}}',
            "namespaces",
        ),
    ],
)
def test_bad_tokens_file_exits_3(tmp_path: Path, content: str | None, message: str) -> None:
    tokens = tmp_path / "tokens.json"
    if content is not None:
        tokens.write_text(content)
    result = run("--data", str(tmp_path / "d"), "--listen", "127.0.0.1:0", "--tokens", str(tokens))
    assert_one_line_error(result, 3, message)


def test_default_tokens_file_is_created_with_an_admin(tmp_path: Path) -> None:
    data = tmp_path / "data"
    ready = tmp_path / "ready"
    proc = subprocess.Popen(
        server_cmd("--data", str(data), "--listen", "127.0.0.1:0", "--ready-file", str(ready)),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        url = json.loads(ready.read_text())["url"]
        token, grant = next(iter(json.loads((data / "tokens.json").read_text())["tokens"].items()))
        assert grant == {"role": "admin", "namespaces": "*"}
        with HttpBackend([url], "demo", token, retrier=Retrier(NO_RETRY)) as b:
            b.put_ref("hello", b"world")
            b.delete_ref("hello")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert f"created an admin token in {data / 'tokens.json'}" in err
    assert proc.returncode == 0  # SIGTERM is a clean stop


def test_tokens_file_is_reloaded_when_changed(fresh_server: ServerProcess) -> None:
    newcomer = "newtool-" + "n" * 20
    url = f"{fresh_server.url}/v2/toolz/stats"
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {newcomer}"
        assert s.get(url, timeout=5).status_code == 401
        doc = json.loads(fresh_server.tokens.read_text())
        doc["tokens"][newcomer] = {"role": "tool", "namespaces": ["toolz"]}
        fresh_server.tokens.write_text(json.dumps(doc))
        assert s.get(url, timeout=5).status_code == 200
        fresh_server.tokens.write_text("{broken")  # a bad edit keeps the last good table
        assert s.get(url, timeout=5).status_code == 200


def make_cert(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl unavailable: {exc}")
    return cert, key


def test_tls(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    server = ServerProcess(
        tmp_path / "data",
        write_tokens(tmp_path / "t.json"),
        ("--tls-cert", str(cert), "--tls-key", str(key)),
    ).start()
    try:
        assert server.url.startswith("https://")
        with HttpBackend(
            [server.url], "tls", ADMIN, retrier=Retrier(NO_RETRY), tls_verify=str(cert)
        ) as b:
            b.put_ref("r", b"secret over TLS")
            assert b.get_ref("r") == b"secret over TLS"
        plain = server.url.replace("https://", "http://")
        with requests.Session() as s, pytest.raises(requests.ConnectionError):
            s.get(plain + "/v2/health", timeout=5)
        with requests.Session() as s, pytest.raises(requests.exceptions.SSLError):
            s.get(server.url + "/v2/health", timeout=5)  # not trusted without the CA
        with HttpBackend([server.url], "tls", ADMIN, tls_verify=str(cert)) as b:
            assert b.health()  # the server survived the failed handshakes
    finally:
        server.stop()


def test_bad_tls_files_exit_3(tmp_path: Path) -> None:
    result = run(
        "--data",
        str(tmp_path / "d"),
        "--tokens",
        str(write_tokens(tmp_path / "t")),
        "--tls-cert",
        str(tmp_path / "missing.pem"),
    )
    assert_one_line_error(result, 3, "cannot load TLS")
    assert ssl.OPENSSL_VERSION


def test_token_create_prints_a_working_tool_token_stored_hashed(
    fresh_server: ServerProcess,
) -> None:
    made = run(
        "token",
        "create",
        "--data",
        str(fresh_server.data),
        "--tokens",
        str(fresh_server.tokens),
        "--tool",
        "Tool07",
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert len(token) >= 40 and "\n" not in token
    stored = json.loads(fresh_server.tokens.read_text())["tokens"]
    assert token not in json.dumps(stored)  # only its hash is kept
    assert stored[f"sha256:{hashlib.sha256(token.encode()).hexdigest()}"] == {
        "role": "tool",
        "namespaces": ["tool07"],
    }
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {token}"
        assert s.get(f"{fresh_server.url}/v2/tool07/stats", timeout=5).status_code == 200
        assert s.get(f"{fresh_server.url}/v2/tool08/stats", timeout=5).status_code == 403
    admin = run(
        "token",
        "create",
        "--data",
        str(fresh_server.data),
        "--tokens",
        str(fresh_server.tokens),
        "--admin",
    )
    with requests.Session() as s:
        s.headers["Authorization"] = f"Bearer {admin.stdout.strip()}"
        assert s.get(f"{fresh_server.url}/v2/namespaces", timeout=5).status_code == 200


def test_token_create_default_file_and_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    made = run("token", "create", "--data", str(data), "--replicate")
    assert made.returncode == 0, made.stderr
    grants = list(json.loads((data / "tokens.json").read_text())["tokens"].values())
    assert grants == [{"role": "replicate", "namespaces": "*"}]
    assert_one_line_error(
        run("token", "create", "--data", str(data), "--tool", "../x"), 2, "invalid tool id"
    )
    (data / "tokens.json").write_text("{broken")
    assert_one_line_error(
        run("token", "create", "--data", str(data), "--tool", "t1"), 3, "cannot read tokens file"
    )
    assert (data / "tokens.json").read_text() == "{broken"  # left as it was
    assert run("token", "create", "--data", str(data)).returncode == 2
