"""``deploys/maintenance.py --data hold=on|off|status`` through the pyinfra CLI against the fake ACC.

The fake ACC is reset before and after every test.
"""

from __future__ import annotations

import smtplib
from email.message import EmailMessage

import pytest

from backupmx_sandbox import seed
from backupmx_sandbox.seed import DOMAIN
from support.providers import acc_writes, admin, dead_port, output, provider_data, pyinfra, secret_values


def maintenance(hold: str | None, *args: str, yes: bool = True):
    data = ["--data", f"hold={hold}"] if hold is not None else []
    return pyinfra("deploys/maintenance.py", *data, *args, yes=yes)


def held(world) -> bool:
    return admin(world, "state")["domains"][DOMAIN]["hold"]


def no_secret_in(world, result) -> None:
    assert not any(value in output(result) for value in secret_values(world))


def queue_one_message(world) -> None:
    relay = next(item for item in world["relays"] if item["host"] == "mail.rollernet.us")
    address, port = relay["smtp"].rsplit(":", 1)
    mail = EmailMessage()
    mail["From"], mail["To"], mail["Subject"] = f"a@{seed.SENDER_DOMAIN}", f"held@{DOMAIN}", "held"
    mail.set_content("queued while on hold\n")
    with smtplib.SMTP(address, int(port), timeout=10) as client:
        client.send_message(mail)


def test_hold_on_off_status_round_trip(acc):
    status = maintenance("status")
    assert status.returncode == 0, output(status)
    assert "viktorbarzin.me: Accept-and-Hold is off (api mail/domain_get)" in output(status)
    assert "Before planned maintenance" in output(status)

    on = maintenance("on")
    assert on.returncode == 0, output(on)
    assert held(acc) is True
    text = output(on)
    assert "Accept-and-Hold is now ON for viktorbarzin.me (api mail/hold_set, re-read api mail/domain_get)" in text
    assert "deliver none of it, even when the primary is back" in text
    assert "Turn it off when maintenance is over" in text

    status = maintenance("status")
    assert status.returncode == 0 and "Accept-and-Hold is ON" in output(status)

    off = maintenance("off")
    assert off.returncode == 0, output(off)
    assert held(acc) is False
    assert "Accept-and-Hold is now off" in output(off) and "held mail is released" in output(off)
    assert "Accept-and-Hold is off" in output(maintenance("status"))
    for result in (on, off, status):
        no_secret_in(acc, result)


def test_status_counts_queued_and_held_mail(acc):
    admin(acc, "relay", {"deliver": False})  # keep it in the queue, whatever the hold
    assert maintenance("on").returncode == 0
    queue_one_message(acc)
    status = maintenance("status")
    assert status.returncode == 0, output(status)
    assert "viktorbarzin.me: 1 message(s) queued at the provider, 1 held" in output(status)


def test_asking_for_the_state_it_already_has_writes_nothing(acc):
    admin(acc, "state", {"hold": True})
    result = maintenance("on")
    assert result.returncode == 0, output(result)
    assert "Accept-and-Hold is already on for viktorbarzin.me" in output(result)
    assert acc_writes(acc) == []


def test_dry_run_shows_the_change_and_makes_none(acc):
    result = maintenance("on", "--dry", yes=False)
    assert result.returncode == 0, output(result)
    assert "Accept-and-Hold viktorbarzin.me: turn it on (now off)" in output(result)
    assert acc_writes(acc) == [] and held(acc) is False


@pytest.mark.parametrize("value,words", [(None, "got nothing"), ("maybe", "got 'maybe'")])
def test_a_bad_or_missing_hold_value_is_one_line(acc, value, words):
    result = maintenance(value)
    assert result.returncode != 0
    lines = [line for line in output(result).splitlines() if "pyinfra error" in line]
    assert len(lines) == 1 and words in lines[0] and "hold=on, hold=off or hold=status" in lines[0]


def test_acc_down_fails_with_the_manual_steps(acc):
    dead = f"http://127.0.0.1:{dead_port()}/api/api.php"
    result = maintenance("on", "--data", provider_data(acc, api_base=dead))
    assert result.returncode != 0
    text = output(result)
    assert f"POST {dead} (m=mail a=domain_get): no connection" in text
    assert "open the mail domain viktorbarzin.me and turn Accept and Hold on" in text
    assert "Traceback" not in text
    no_secret_in(acc, result)


def test_ledger_backend_cannot_toggle_and_says_what_to_do_by_hand(acc):
    result = maintenance("off", "--data", 'provider={"name": "rollernet", "backend": "ledger"}')
    assert result.returncode != 0
    assert "(ledger backend): cannot turn Accept-and-Hold off" in output(result)
    assert "turn Accept and Hold off; then flush its queue" in output(result)
    assert acc_writes(acc) == []
