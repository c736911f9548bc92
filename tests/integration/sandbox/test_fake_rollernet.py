"""The fake Roller Network: ACC API (assumed shape, docs/provider-api.md) and its relays.

Every test starts from the seeded account (``POST /_sandbox/reset``) and resets
again afterwards, so the shared world is left as seeded.
"""

from __future__ import annotations

import email.utils
import json
import smtplib
import ssl
import threading
import time
from email.message import EmailMessage

import pytest
import requests
from aiosmtpd.controller import Controller

from backupmx_sandbox import provider, seed
from backupmx_sandbox.supervisor import Supervisor

RECIPIENT = f"someone@{seed.DOMAIN}"


# -- helpers -----------------------------------------------------------------


def acc(world, action, data=None, key=None, method="GET", user=None):
    params = {"u": user or world["acc_user"], "k": key or world["acc_api_key"], "m": "mail", "a": action}
    if data is not None:
        params["d"] = json.dumps(data)
    if method == "GET":
        return requests.get(world["acc_api_base"], params=params, timeout=10)
    return requests.post(world["acc_api_base"], data=params, timeout=10)


def acc_data(world, action, data=None):
    response = acc(world, action, data)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "ok", body
    return body["data"]


def admin(world, name, payload=None):
    url = f"{world['acc_admin']}/{name}"
    response = requests.post(url, json=payload or {}, timeout=10) if payload is not None else \
        requests.get(url, timeout=10)
    response.raise_for_status()
    return response.json()


def relay(world, host="mail.rollernet.us") -> tuple[str, int]:
    entry = next(item for item in world["relays"] if item["host"] == host)
    address, port = entry["smtp"].rsplit(":", 1)
    return address, int(port)


def message(subject="backup mx test", to=RECIPIENT) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = f"sender@{seed.SENDER_DOMAIN}"
    mail["To"] = to
    mail["Subject"] = subject
    # A well-formed message: without these rspamd adds MISSING_MID/MISSING_DATE and,
    # on top of the (not yet exempted) SPF/DMARC failure, rejects it.
    mail["Date"] = email.utils.formatdate()
    mail["Message-ID"] = email.utils.make_msgid(domain=seed.SENDER_DOMAIN)
    mail.set_content("Queued by the fake Roller Network.\n.\nA line that was a lone dot above.\n")
    return mail


def send_via_relay(world, mail: EmailMessage, host="mail.rollernet.us", rcpts=None, tls=True) -> None:
    address, port = relay(world, host)
    with smtplib.SMTP(timeout=10) as client:
        client.connect(address, port)
        client._host = host  # verify the certificate against the relay's name, not 127.0.0.1
        client.ehlo("client.sender.test")
        if tls:
            client.starttls(context=ssl.create_default_context(cafile=world["ca_cert"]))
            client.ehlo("client.sender.test")
        client.send_message(mail, from_addr=f"sender@{seed.SENDER_DOMAIN}", to_addrs=rcpts or [mail["To"]])


def queued(world, domain=seed.DOMAIN) -> list[dict]:
    return acc_data(world, "queue_list", {"domain": domain})


def wait_for(condition, timeout=15.0, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def seeded(world):
    admin(world, "reset", {})
    yield
    admin(world, "reset", {})


# -- ACC API -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_domain_get_returns_the_seeded_state(world, method):
    response = acc(world, "domain_get", {"domain": seed.DOMAIN}, method=method)

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "data": {
            "domain": seed.DOMAIN,
            "mode": "secondary_mx",
            "enabled": True,
            "user_table_default": "allow_any",
            "hold": False,
        },
    }


def test_relay_addresses_are_the_seeded_cidrs(world):
    data = acc_data(world, "relay_addresses")
    assert data["cidrs"] == seed.RELAY_CIDRS == world["relay_cidrs"]
    assert data["hosts"] == seed.BACKUP_MX


def test_wrong_key_is_refused_and_never_echoed(world):
    wrong = "wrong-" + world["acc_api_key"][::-1]
    response = acc(world, "domain_get", {"domain": seed.DOMAIN}, key=wrong)

    assert response.status_code == 403
    assert response.json()["status"] == "error"
    assert response.json()["error"]["code"] == "auth_failed"
    assert wrong not in response.text and world["acc_api_key"] not in response.text
    log = json.dumps(admin(world, "requests"))
    assert wrong not in log and world["acc_api_key"] not in log
    assert admin(world, "requests")[-1]["key"] == "invalid"


def test_wrong_user_is_refused(world):
    response = acc(world, "domain_get", {"domain": seed.DOMAIN}, user="someone-else")
    assert response.status_code == 403 and response.json()["error"]["code"] == "auth_failed"


def test_key_without_permissions_is_denied(world):
    response = acc(world, "domain_get", {"domain": seed.DOMAIN}, key=world["acc_api_key_noperm"])

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert world["acc_api_key_noperm"] not in response.text


def test_hold_set_round_trips(world):
    on = acc_data(world, "hold_set", {"domain": seed.DOMAIN, "hold": True})
    assert on["hold"] is True
    assert acc_data(world, "domain_get", {"domain": seed.DOMAIN})["hold"] is True

    off = acc_data(world, "hold_set", {"domain": seed.DOMAIN, "hold": False})
    assert off["hold"] is False
    assert acc_data(world, "domain_get", {"domain": seed.DOMAIN})["hold"] is False


def test_bad_requests_are_errors_in_the_envelope(world):
    not_bool = acc(world, "hold_set", {"domain": seed.DOMAIN, "hold": "yes"}).json()
    unknown_domain = acc(world, "domain_get", {"domain": "example.org"}).json()
    unknown_action = acc(world, "no_such_action").json()

    assert not_bool["error"]["code"] == "bad_request"
    assert unknown_domain["error"]["code"] == "domain_not_found"
    assert unknown_action["error"]["code"] == "unknown_action"


def test_usertable_default_round_trips(world):
    table = acc_data(world, "usertable_set_default", {"domain": seed.DOMAIN, "default": "deny"})
    assert table["default"] == "deny"
    assert {"abuse", "postmaster"} <= set(table["users"])
    assert acc_data(world, "domain_get", {"domain": seed.DOMAIN})["user_table_default"] == "deny"


def test_domain_set_disables_the_domain(world):
    assert acc_data(world, "domain_set", {"domain": seed.DOMAIN, "enabled": False})["enabled"] is False
    assert acc_data(world, "domain_list") == [acc_data(world, "domain_get", {"domain": seed.DOMAIN})]


def test_queue_list_is_empty_after_reset(world):
    assert queued(world) == []
    assert admin(world, "queue") == {"queued": [], "delivered": [], "bounced": []}


def test_admin_state_changes_what_the_api_answers(world):
    admin(world, "state", {"mode": "primary", "relay_cidrs": ["192.0.2.0/24"]})
    assert acc_data(world, "domain_get", {"domain": seed.DOMAIN})["mode"] == "primary"
    assert acc_data(world, "relay_addresses")["cidrs"] == ["192.0.2.0/24"]

    admin(world, "state", {"remove": True})
    assert acc(world, "domain_get", {"domain": seed.DOMAIN}).json()["error"]["code"] == "domain_not_found"


# -- faults ------------------------------------------------------------------


def test_server_error_fault_answers_that_many_requests(world):
    admin(world, "faults", {"server_error": {"count": 2, "status": 502}})

    statuses = [acc(world, "domain_list").status_code for _ in range(3)]

    assert statuses == [502, 502, 200]


def test_rate_limit_fault_sends_retry_after(world):
    admin(world, "faults", {"rate_limit": {"count": 1, "retry_after": 7}})

    response = acc(world, "domain_list")

    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert acc(world, "domain_list").status_code == 200


def test_down_fault_drops_the_connection_until_cleared(world):
    admin(world, "faults", {"down": True})
    with pytest.raises(requests.ConnectionError):
        acc(world, "domain_list")

    admin(world, "faults", {"down": False})
    assert acc(world, "domain_list").status_code == 200


def test_api_key_never_reaches_the_process_log(world, sandbox):
    acc(world, "domain_list")  # the key travels in the query string here
    log = (sandbox.root / "log" / "rollernet.log").read_text()
    assert world["acc_api_key"] not in log


# -- relays: receiving ---------------------------------------------------------


@pytest.mark.parametrize("host", seed.BACKUP_MX)
def test_relay_accepts_over_starttls_and_queues(world, host):
    admin(world, "relay", {"deliver": False})  # keep it queued whatever the mail host does

    send_via_relay(world, message(), host=host)

    [entry] = queued(world)
    assert entry["from"] == f"sender@{seed.SENDER_DOMAIN}"
    assert entry["to"] == [RECIPIENT]
    assert entry["relay"] == host
    assert entry["size"] > 0 and entry["attempts"] == 0 and entry["held"] is False
    assert entry["queued_at"].endswith("Z")


def test_relay_certificate_fails_for_another_name(world):
    address, port = relay(world)
    with smtplib.SMTP(address, port, timeout=10) as client:
        client._host = "mail.example.org"
        with pytest.raises(ssl.SSLCertVerificationError):
            client.starttls(context=ssl.create_default_context(cafile=world["ca_cert"]))


def test_relay_refuses_mail_for_other_domains(world):
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send_via_relay(world, message(to="someone@example.org"))

    code, text = refused.value.recipients["someone@example.org"]
    assert code in (550, 554) and b"Relay access denied" in text
    assert queued(world) == []


def test_deny_table_rejects_unknown_users_but_not_postmaster(world):
    admin(world, "relay", {"deliver": False})
    acc_data(world, "usertable_set_default", {"domain": seed.DOMAIN, "default": "deny"})

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        send_via_relay(world, message())
    assert refused.value.recipients[RECIPIENT][0] == 550
    assert b"5.1.1" in refused.value.recipients[RECIPIENT][1]

    send_via_relay(world, message(to=f"postmaster@{seed.DOMAIN}"))
    assert [entry["to"] for entry in queued(world)] == [[f"postmaster@{seed.DOMAIN}"]]


def test_disabled_domain_is_not_relayed(world):
    acc_data(world, "domain_set", {"domain": seed.DOMAIN, "enabled": False})
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        send_via_relay(world, message())


def test_hold_keeps_mail_queued_until_released(world):
    acc_data(world, "hold_set", {"domain": seed.DOMAIN, "hold": True})
    send_via_relay(world, message())

    rounds = admin(world, "delivery")["rounds"]
    wait_for(lambda: admin(world, "delivery")["rounds"] >= rounds + 3)  # several delivery rounds went by
    [entry] = queued(world)
    assert entry["held"] is True and entry["attempts"] == 0 and entry["next_attempt"] is None

    acc_data(world, "hold_set", {"domain": seed.DOMAIN, "hold": False})

    def attempted():
        report = admin(world, "queue")
        return report["delivered"] or report["bounced"] or any(item["attempts"] > 0 for item in report["queued"])

    wait_for(attempted, timeout=10)


def test_queue_survives_a_restart(world, sandbox):
    acc_data(world, "hold_set", {"domain": seed.DOMAIN, "hold": True})
    send_via_relay(world, message())
    [before] = queued(world)

    supervisor = Supervisor(sandbox)
    supervisor.stop("rollernet")
    for service in provider.services(sandbox):
        supervisor.start(service)

    [after] = queued(world)
    assert after["id"] == before["id"] and after["held"] is True


# -- relays: delivering to the mail host -----------------------------------------


def test_undeliverable_mail_stays_queued_with_the_error(world, closed_port):
    admin(world, "relay", {"deliver_to": f"127.0.0.1:{closed_port}"})
    send_via_relay(world, message())

    [entry] = wait_for(lambda: [item for item in queued(world) if item["attempts"] >= 2])

    assert "Connection refused" in entry["last_error"]
    assert entry["next_attempt"] is not None
    assert admin(world, "queue")["delivered"] == []


class StandInMailHost:
    """A PROXY-v2 SMTP listener on the mail host's port, for when the real one is not up.

    aiosmtpd parses the PROXY header itself, an independent check of the relay's.
    """

    def __init__(self, port: int, rcpt_reply: str | None = None):
        self.received: list[dict] = []
        self.rcpt_reply = rcpt_reply
        self.lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=port, proxy_protocol_timeout=5,
                                     server_hostname="mail.viktorbarzin.me", ready_timeout=5)

    async def handle_PROXY(self, server, session, envelope, proxy_data):
        return proxy_data.valid

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received.append({
                "source": str(session.proxy_data.src_addr),
                "helo": session.host_name,
                "rcpts": list(envelope.rcpt_tos),
                "content": envelope.original_content,
            })
        return "250 2.0.0 Ok: queued"

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()


@pytest.fixture
def closed_port(sandbox) -> int:
    """A port of this world's own that nothing listens on (reserved: no other world or
    outgoing connection takes it)."""
    return sandbox.port("tests.stand-in")


@pytest.fixture
def stand_in_port(world, closed_port):
    """A port of the test's own; the relays deliver there instead of the mail host."""
    admin(world, "relay", {"deliver_to": f"127.0.0.1:{closed_port}"})
    return closed_port


def test_queue_drains_to_the_mail_host_with_the_relay_source(world, stand_in_port):
    send_via_relay(world, message(subject="drain"), host="mail2.rollernet.us")
    wait_for(lambda: any(item["attempts"] >= 1 for item in queued(world)))  # deferred while "down"

    with StandInMailHost(stand_in_port) as mailhost:
        acc_data(world, "queue_flush", {"domain": seed.DOMAIN})
        report = wait_for(lambda: (lambda r: r if r["delivered"] else None)(admin(world, "queue")))

    assert report["queued"] == [] and queued(world) == []
    [delivered] = report["delivered"]
    assert delivered["to"] == [RECIPIENT] and delivered["relay"] == "mail2.rollernet.us"
    [arrived] = mailhost.received
    assert arrived["source"] == seed.RELAY_SOURCE["mail2.rollernet.us"]
    assert arrived["helo"] == "mail2.rollernet.us"
    assert arrived["rcpts"] == [RECIPIENT]
    assert arrived["content"].startswith(b"Received: from client.sender.test")
    assert b"by mail2.rollernet.us" in arrived["content"] and b"with ESMTPS" in arrived["content"]
    assert b"\r\n.\r\nA line that was a lone dot above." in arrived["content"]


def test_source_override_is_announced_and_client_address_recorded(world, stand_in_port):
    admin(world, "relay", {"source_override": "203.0.113.99", "client_address": seed.SENDER_ALLOWED_IP})
    with StandInMailHost(stand_in_port) as mailhost:
        send_via_relay(world, message())
        wait_for(lambda: mailhost.received)
    assert mailhost.received[0]["source"] == "203.0.113.99"
    assert f"(unknown [{seed.SENDER_ALLOWED_IP}])".encode() in mailhost.received[0]["content"].split(b"\r\n", 1)[0]


def test_mail_host_4xx_is_retried(world, stand_in_port):
    with StandInMailHost(stand_in_port, rcpt_reply="451 4.3.0 try again later"):
        send_via_relay(world, message())
        [entry] = wait_for(lambda: [item for item in queued(world) if item["attempts"] >= 2])
    assert "451 4.3.0 try again later" in entry["last_error"] and "RCPT TO" in entry["last_error"]
    assert admin(world, "queue")["bounced"] == []


def test_mail_host_5xx_is_bounced_without_a_dsn(world, stand_in_port):
    with StandInMailHost(stand_in_port, rcpt_reply="550 5.1.1 no such user") as mailhost:
        send_via_relay(world, message())
        report = wait_for(lambda: (lambda r: r if r["bounced"] else None)(admin(world, "queue")))
    assert report["queued"] == [] and report["delivered"] == []
    assert "550 5.1.1 no such user" in report["bounced"][0]["reply"]
    assert mailhost.received == []  # no bounce message goes anywhere
    # The ACC lists the domain's bounces, with the mail host's reply.
    [listed] = acc_data(world, "bounce_list", {"domain": seed.DOMAIN})
    assert listed["to"] == [RECIPIENT] and "said: 550 5.1.1 no such user" in listed["reply"], listed
