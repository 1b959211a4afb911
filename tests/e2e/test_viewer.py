"""The image viewer in a real browser: a patient opens their published CT, scrolls through it
with the wheel, the keys and the slider, changes the window by a preset and by dragging, zooms,
and plays it as a film. Every picture comes decrypted and rendered from the real store."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.urls import reverse
from playwright.sync_api import Page, expect

from audit.codes import Action, ActorKind, Outcome
from audit.models import AuditEvent
from sharing.services import publish_spooled
from studies.models import Patient, Study
from studies.services import Channel, IngestSource
from studies.synthetic import generate_study
from tests.e2e.test_reconciliation import sign_in
from tests.sharing.conftest import JANE, ingest_files, store  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.stack]

SLICES = 12


@pytest.fixture
def published_ct(tmp_path, store, origin, patient) -> Study:  # noqa: F811 (store: imported)
    """A 12-slice CT of 256x256, ingested and published to the store, filed under the
    `patient` account's record."""
    paths = generate_study(tmp_path / "ct", instances=SLICES, rows=256, patient=JANE)
    source = IngestSource(origin, Channel.DIMSE, ActorKind.DICOM_NODE, "RIVERSIDE_PACS",
                          address="127.0.0.1")  # fmt: skip
    ingest_files(paths, source)
    publish_spooled(settings.PORTAL_NODE)
    study = Study.objects.get()
    assert study.state == Study.State.AVAILABLE
    Patient.objects.filter(pk=study.patient_id).update(account=patient)
    return study


def displayed(page: Page) -> str:
    return page.locator("#viewer-stage").get_attribute("data-displayed") or ""


def wait_for_new_picture(page: Page, before: str) -> str:
    """Wait until the canvas shows another picture than `before`; return its URL."""
    page.wait_for_function(
        "before => { const s = document.getElementById('viewer-stage');"
        " const shown = s.getAttribute('data-displayed'); return shown && shown !== before; }",
        arg=before,
    )
    return displayed(page)


def test_a_patient_scrolls_windows_and_zooms_their_ct(live_server, page, shoot, patient,
                                                      published_ct):  # fmt: skip
    sign_in(page, live_server, patient)
    page.goto(f"{live_server.url}{reverse('viewer:study', args=[published_ct.public_id])}")
    expect(page.get_by_role("heading", name="SYNTHETIC CT STUDY")).to_be_visible()
    expect(page.get_by_role("link", name="SYNTHETIC CT SERIES")).to_have_attribute(
        "aria-current", "page"
    )
    stage = page.locator("#viewer-stage")
    position = page.locator("#viewer-position")
    first = wait_for_new_picture(page, "")
    assert "/frames/1/rendered" in first
    expect(position).to_have_text(f"1 / {SLICES}")
    expect(page.locator("#viewer-instance")).to_have_text("Instance 1")
    expect(page.locator("#viewer-window")).to_have_text("Default · W 400 · L 40")
    expect(page.locator("#viewer-status")).to_have_text("")
    shoot("first-image")

    # The wheel: one notch, one image further.
    stage.hover()
    page.mouse.wheel(0, 100)
    expect(position).to_have_text(f"2 / {SLICES}")
    second = wait_for_new_picture(page, first)
    assert second != first
    expect(page.locator("#viewer-instance")).to_have_text("Instance 2")
    shoot("wheel")

    # Keys, on the focused stage: arrows one image, Page Down ten, Home back to the start.
    stage.focus()
    page.keyboard.press("ArrowDown")
    expect(position).to_have_text(f"3 / {SLICES}")
    third = wait_for_new_picture(page, second)
    page.keyboard.press("PageDown")
    expect(position).to_have_text(f"{SLICES} / {SLICES}")  # clamped at the last image
    last = wait_for_new_picture(page, third)
    page.keyboard.press("ArrowUp")
    expect(position).to_have_text(f"{SLICES - 1} / {SLICES}")
    wait_for_new_picture(page, last)
    shoot("keys")
    page.keyboard.press("Home")
    expect(position).to_have_text(f"1 / {SLICES}")

    # The slider, as a keyboard or a screen reader uses it.
    slider = page.get_by_label("Image", exact=True)
    slider.fill("6")
    expect(position).to_have_text(f"6 / {SLICES}")
    expect(slider).to_have_attribute("aria-valuetext", f"Image 6 of {SLICES}")
    sixth = wait_for_new_picture(page, first)
    assert "/frames/1/rendered" in sixth

    # A preset: the server renders the lung window.
    page.get_by_role("button", name="Lung").click()
    expect(page.get_by_role("button", name="Lung")).to_have_attribute("aria-pressed", "true")
    lung = wait_for_new_picture(page, sixth)
    assert lung.endswith("?preset=lung")
    expect(page.locator("#viewer-window")).to_have_text("Lung · W 1500 · L -600")
    shoot("lung-preset")

    # Dragging with the right button changes the window; the server renders it.
    box = stage.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down(button="right")
    page.mouse.move(x - 150, y + 40, steps=8)
    page.mouse.up(button="right")
    dragged = wait_for_new_picture(page, lung)
    assert "?window=" in dragged
    expect(page.locator("#viewer-window")).not_to_contain_text("Lung")
    expect(page.get_by_role("button", name="Lung")).to_have_attribute("aria-pressed", "false")
    shoot("window-dragged")

    # And with the Window tool and the left button, as on a touch screen.
    page.get_by_role("button", name="Window", exact=True).click()
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 100, y - 60, steps=6)
    page.mouse.up()
    dragged_again = wait_for_new_picture(page, dragged)
    assert "?window=" in dragged_again
    page.get_by_role("button", name="Default").click()
    default = wait_for_new_picture(page, dragged_again)
    assert default == sixth  # the header's window again, already in the browser's memory

    # Zoom with the buttons and with Ctrl and the wheel; Fit goes back.
    page.get_by_role("button", name="Zoom in").click()
    expect(page.locator("#viewer-zoom")).to_have_text("Zoom 125%")
    stage.hover()
    page.keyboard.down("Control")
    page.mouse.wheel(0, -100)
    page.keyboard.up("Control")
    expect(page.locator("#viewer-zoom")).to_have_text("Zoom 156%")
    expect(position).to_have_text(f"6 / {SLICES}")  # zooming does not scroll
    shoot("zoomed")
    page.get_by_role("button", name="Fit").click()
    expect(page.locator("#viewer-zoom")).to_have_text("Zoom 100%")

    # Cine: it plays through the stack and stops on request.
    page.get_by_role("button", name="Play").click()
    expect(page.get_by_role("button", name="Pause")).to_have_attribute("aria-pressed", "true")
    expect(position).not_to_have_text(f"6 / {SLICES}")
    page.get_by_role("button", name="Pause").click()
    expect(page.get_by_role("button", name="Play")).to_have_attribute("aria-pressed", "false")
    shoot("after-cine")

    # Every picture was an audited read of the patient's own; nothing was refused.
    reads = AuditEvent.objects.filter(action=Action.INSTANCE_READ)
    assert reads.filter(outcome=Outcome.ALLOWED, actor_id=str(patient.pk)).count() >= SLICES
    assert not reads.exclude(outcome=Outcome.ALLOWED).exists()
    for text in ("MRN100", "DOE^JANE", published_ct.study_instance_uid):
        assert text not in page.content()
