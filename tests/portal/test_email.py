"""E-mail leaves through real SMTP and arrives in the sink's Maildir (see scripts/stack.py)."""

from __future__ import annotations

from mailbox import Maildir

from django.core.mail import send_mail


def test_it_delivers_mail_through_the_smtp_sink(mailbox: Maildir) -> None:
    sent = send_mail(
        "Your images are available",
        "Sign in to see them.",
        None,
        ["pat@example.org"],
    )
    assert sent == 1
    messages = list(mailbox)
    assert len(messages) == 1
    message = messages[0]
    assert message["Subject"] == "Your images are available"
    assert message["To"] == "pat@example.org"
    # What the SMTP envelope carried, which is where the sink really delivered it.
    assert message["X-RcptTo"] == "pat@example.org"
    assert "Sign in to see them." in message.get_payload()
