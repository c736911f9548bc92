"""The canary's hand-off: one SMTP session to a backup MX host, run on the host the canary is
sent from (the mail host by default), as a small python3 script over that host's SSH connection.

The script takes the message base64-encoded as an argument (no secret in it: a DKIM
signature, never the key), speaks SMTP as an MTA does (EHLO with a fully qualified
name, opportunistic STARTTLS, no authentication) and prints one JSON line: whether the
backup host took it, the command it refused and its reply.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence

from backupmx.lifecycle.canary.verdict import SendOutcome

# argv -> (ok, stdout lines, stderr) on the host the canary is sent from.
Remote = Callable[[Sequence[str]], tuple[bool, list[str], str]]

SEND_SCRIPT = r'''
import base64, json, smtplib, ssl, sys, time
host, port, helo, sender, rcpt, data = sys.argv[1:7]
stage = "connect"
def done(ok, code, reply, at=None):
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    print(json.dumps({"ok": ok, "stage": stage, "code": code, "reply": " ".join(f"{code or ''} {text}".split()),
                      "at": at}))
    sys.exit(0)
try:
    # Connected by the constructor, which keeps the host's name for starttls() (connect() alone does not).
    client = smtplib.SMTP(host, int(port), timeout=60, local_hostname=helo)
except smtplib.SMTPConnectError as error:  # a greeting other than 220
    done(False, error.smtp_code, error.smtp_error)
except Exception as error:
    done(False, None, f"{type(error).__name__}: {error}")
try:
    stage = "EHLO"
    code, reply = client.ehlo()
    if code != 250:
        done(False, code, reply)
    if client.has_extn("starttls"):
        stage = "STARTTLS"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        client.starttls(context=context)
        client.ehlo()
    stage = "MAIL FROM"
    code, reply = client.mail(sender)
    if code != 250:
        done(False, code, reply)
    stage = "RCPT TO"
    code, reply = client.rcpt(rcpt)
    if code not in (250, 251):
        done(False, code, reply)
    stage = "DATA"
    code, reply = client.data(base64.b64decode(data))
    at = time.time()
    ok = code == 250
    try:
        client.quit()
    except Exception:
        pass
    done(ok, code, reply, at if ok else None)
except smtplib.SMTPResponseException as error:
    done(False, error.smtp_code, error.smtp_error)
except Exception as error:
    done(False, None, f"{type(error).__name__}: {error}")
'''.strip()


def send_argv(host: str, port: int, helo: str, sender: str, recipient: str, message: bytes) -> list[str]:
    return ["python3", "-c", SEND_SCRIPT, host, str(port), helo, sender, recipient,
            base64.b64encode(message).decode()]


def parse_send(ok: bool, lines: Sequence[str], stderr: str) -> SendOutcome:
    """The script's JSON line as a ``SendOutcome``; anything else means the send host failed."""
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                break
            at = data.get("at")
            return SendOutcome(bool(data.get("ok")), str(data.get("reply") or "no reply"),
                               None if data.get("ok") else str(data.get("stage")), data.get("code"),
                               at if isinstance(at, (int, float)) else None)
    why = (stderr or "").strip().splitlines()[-1:] or ["no output"]
    return SendOutcome(False, f"the send script failed ({'exit non-zero' if not ok else 'no result'}: {why[0]}); "
                       "is python3 installed there?", "send host")


def hand_off(remote: Remote, host: str, port: int, helo: str, sender: str, recipient: str,
             message: bytes) -> SendOutcome:
    ok, lines, stderr = remote(send_argv(host, port, helo, sender, recipient, message))
    return parse_send(ok, lines, stderr)
