"""The MQTT upstream over TLS with a client certificate and a password file, against a real Mosquitto."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from edge.broker import Mosquitto, free_port
from edge.simulate import SentUplink, Simulator, publish
from tests.pki import make_pki

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def tls_upstream():
    """A broker with a plain loopback listener (for the test's recorder) and an mTLS+password one."""
    # Outside pytest's 0700 tmp_path: the broker drops from root to the `mosquitto` user.
    shared = Path(tempfile.mkdtemp(prefix="edge-pki-"))
    os.chmod(shared, 0o755)
    pki = make_pki(shared / "pki")
    pwfile = shared / "pki" / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "edge", "s3cret-Pa55"], check=True)
    os.chmod(pwfile, 0o644)
    tls_port = free_port()
    broker = Mosquitto(
        head="per_listener_settings true",
        extra=(f"listener {tls_port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server_cert}\n"
               f"keyfile {pki.server_key}\nrequire_certificate true\npassword_file {pwfile}\n"
               "allow_anonymous false\n"),
    )
    broker.start()
    yield broker, tls_port, pki
    broker.close()
    shutil.rmtree(shared, ignore_errors=True)


def _tls_config(make_config, chirpstack, port, pki, secret_file, ca=None):
    cfg = make_config(chirpstack.url, f"mqtts://127.0.0.1:{port}")
    text = cfg.read_text().replace(
        'topic = "lorawan/{dev_eui}"',
        f'topic = "lorawan/{{dev_eui}}"\nca_file = "{ca or pki.ca}"\ncert_file = "{pki.client_cert}"\n'
        f'key_file = "{pki.client_key}"\nusername = "edge"\npassword_file = "{secret_file}"')
    cfg.write_text(text)
    return cfg


def test_mqtt_sink_mtls_with_password_file_delivers(tls_upstream, broker_factory, make_config, edge_process,
                                                    recorder, tmp_path):
    upstream, tls_port, pki = tls_upstream
    chirpstack = broker_factory()
    secret = tmp_path / "upstream.secret"
    secret.write_text("s3cret-Pa55\n")
    rec = recorder(upstream)
    edge = edge_process(_tls_config(make_config, chirpstack, tls_port, pki, secret))
    edge.start()
    edge.wait_connected()
    sent: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(3, seed=5), 20, None, sent.append)
    assert rec.wait_for({s.uplink_id for s in sent}, 30)
    assert edge.terminate() == 0
    # The password is read from its file and never written to the log, nor shown by `edge status`.
    assert "s3cret-Pa55" not in edge.log.read_text()
    for extra in ([], ["--json"]):
        shown = subprocess.run([sys.executable, "-m", "edge", "status", "--config", str(edge.config), *extra],
                               capture_output=True, text=True, timeout=60, check=True)
        assert "city" in shown.stdout and "s3cret-Pa55" not in shown.stdout + shown.stderr


def test_mqtt_sink_untrusted_server_certificate_is_refused(tls_upstream, broker_factory, make_config,
                                                           edge_process, recorder, tmp_path):
    upstream, tls_port, pki = tls_upstream
    other = make_pki(tmp_path / "other-ca", ca_name="not-the-city-ca")
    chirpstack = broker_factory()
    secret = tmp_path / "upstream.secret"
    secret.write_text("s3cret-Pa55\n")
    rec = recorder(upstream)
    edge = edge_process(_tls_config(make_config, chirpstack, tls_port, pki, secret, ca=other.ca))
    edge.start()
    edge.wait_connected()
    sent: list[SentUplink] = []
    publish(chirpstack.host, chirpstack.port, Simulator(2, seed=6), 5, None, sent.append)
    time.sleep(2)
    assert not rec.ids(), "nothing may reach a broker whose certificate is not trusted"
    log = edge.log.read_text()
    assert "CERTIFICATE_VERIFY_FAILED" in log or "certificate verify failed" in log
    # An operator must act: an ERROR that names the certificate problem, not a network blip at WARNING.
    assert any(" ERROR " in line and "TLS certificate of upstream city" in line and "certificate verify failed"
               in line for line in log.splitlines()), log
    edge.terminate()
