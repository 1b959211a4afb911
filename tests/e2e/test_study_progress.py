"""Staff watch a study's progress bar move as it is published, without reloading the page."""

from __future__ import annotations

import datetime
import re

import pytest
from django.conf import settings
from django.test import Client
from playwright.sync_api import Page, expect

from studies.models import Study
from tests.factories import PatientFactory, SeriesFactory, StudyFactory

pytestmark = pytest.mark.django_db(transaction=True)


def sign_in(page: Page, live_server, user) -> None:
    """A signed-in session (the sign-in journey itself is tested in test_sign_in.py)."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME]
    page.context.add_cookies([{"name": cookie.key, "value": cookie.value, "url": live_server.url}])


@pytest.fixture
def publishing(origin) -> Study:
    study = StudyFactory(
        source_facility=origin,
        patient=PatientFactory(name="DOE^JANE"),
        description="CT CHEST W/O CONTRAST",
        modalities_in_study="CT\\SR",
        number_of_series=2,
        number_of_instances=4,
        number_of_published_instances=1,
        state=Study.State.PUBLISHING,
        available_until=datetime.date(2027, 1, 2),
    )
    SeriesFactory(study=study, series_number=1, description="AXIAL 5MM", number_of_instances=3)
    SeriesFactory(study=study, series_number=2, modality="SR", description="DOSE REPORT",
                  number_of_instances=1)  # fmt: skip
    StudyFactory(source_facility=origin, description="MR KNEE LEFT", modalities_in_study="MR",
                 state=Study.State.AVAILABLE, number_of_published_instances=3,
                 legal_hold=True)  # fmt: skip
    StudyFactory(source_facility=origin, patient=None, match=Study.Match.PENDING,
                 description="XR CHEST 2 VIEWS", modalities_in_study="CR",
                 number_of_instances=0)  # fmt: skip
    return study


def test_the_bar_follows_publishing_without_a_reload(
    live_server, page, shoot, facility_admin, publishing
):
    progress_requests: list[str] = []
    page.on("request", lambda r: progress_requests.append(r.url) if "/progress/" in r.url else None)
    sign_in(page, live_server, facility_admin)

    page.goto(f"{live_server.url}/")
    expect(page.get_by_role("heading", name="Staff home")).to_be_visible()
    shoot("staff-home")
    page.get_by_role("link", name="Studies", exact=True).click()
    expect(page.get_by_role("heading", name="Studies", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="CT CHEST W/O CONTRAST")).to_be_visible()
    shoot("list")

    page.get_by_role("link", name="CT CHEST W/O CONTRAST").click()
    bar = page.locator("progress[data-progress-bar]")
    text = page.locator("[data-progress-text]")
    label = page.locator("[data-progress-label]")
    expect(text).to_have_text("1 of 4 images published")
    expect(text).to_have_attribute("aria-live", "polite")
    expect(label).to_have_text("Publishing")
    expect(bar).to_have_js_property("value", 1)
    expect(page.get_by_text("Available until Jan. 2, 2027")).to_be_visible()
    shoot("publishing-1-of-4")
    # A reload or navigation would lose this mark.
    page.evaluate("window.stillTheSamePage = true")

    Study.objects.filter(pk=publishing.pk).update(number_of_published_instances=2)
    expect(text).to_have_text("2 of 4 images published")
    expect(bar).to_have_js_property("value", 2)
    page.wait_for_timeout(600)  # the bar's width eases over 0.4 s
    shoot("publishing-2-of-4")

    Study.objects.filter(pk=publishing.pk).update(
        number_of_published_instances=4, state=Study.State.AVAILABLE
    )
    expect(text).to_have_text("4 of 4 images published")
    expect(label).to_have_text("Available")
    expect(label).to_have_class(re.compile(r"\bbadge-state-available\b"))
    expect(bar).to_have_js_property("value", 4)
    assert page.evaluate("window.stillTheSamePage") is True
    page.wait_for_timeout(600)
    shoot("available")

    # Done: the page stops asking.
    asked = len(progress_requests)
    page.wait_for_timeout(4500)
    assert len(progress_requests) == asked


def test_polling_backs_off_on_errors_and_rests_while_nobody_looks(
    live_server, page, shoot, front_desk, publishing
):
    """With Playwright's clock standing still, time moves only when the test says so; after
    each step the fetch it set off is given a moment of real time to settle."""
    asked: list[str] = []
    failing = {"on": True}

    def answer(route) -> None:
        asked.append(route.request.url)
        if failing["on"]:
            route.fulfill(status=503, body="busy")
        else:
            route.continue_()

    def step(seconds: float, times: int = 1) -> None:
        for _ in range(times):
            page.clock.run_for(int(seconds * 1000))
            page.wait_for_timeout(150)

    def set_hidden(hidden: bool) -> None:
        page.evaluate(
            "hidden => { Object.defineProperty(document, 'hidden', "
            "{configurable: true, get: () => hidden});"
            " document.dispatchEvent(new Event('visibilitychange')); }",
            hidden,
        )

    start = datetime.datetime(2026, 5, 4, 9, 0, tzinfo=datetime.UTC)
    page.clock.install(time=start)
    page.clock.pause_at(start + datetime.timedelta(seconds=1))
    sign_in(page, live_server, front_desk)
    page.route(re.compile(r".*/progress/$"), answer)
    page.goto(f"{live_server.url}/studies/{publishing.public_id}/")
    text = page.locator("[data-progress-text]")
    expect(text).to_have_text("1 of 4 images published")

    # Failing: asked after 2, 4, 8, 16 s... not every 2 s (which would be 20 times in 40 s).
    step(1, 40)
    assert 3 <= len(asked) <= 5, asked

    # Hidden: nothing is asked, however long; shown again: asked at once.
    failing["on"] = False
    set_hidden(True)
    hidden_since = len(asked)
    step(10, 12)
    assert len(asked) == hidden_since
    Study.objects.filter(pk=publishing.pk).update(number_of_published_instances=3)
    set_hidden(False)
    expect(text).to_have_text("3 of 4 images published")
    assert len(asked) == hidden_since + 1

    # Nobody at the page for ten minutes: it stops asking (each ask would keep the session
    # alive past its idle timeout); the next move of the mouse starts it again.
    step(30, 22)
    resting_since = len(asked)
    step(30, 4)
    assert len(asked) == resting_since
    Study.objects.filter(pk=publishing.pk).update(number_of_published_instances=4)
    page.mouse.move(200, 300)
    expect(text).to_have_text("4 of 4 images published")
    assert len(asked) == resting_since + 1
    page.clock.resume()
    page.wait_for_timeout(600)  # the bar's width eases over 0.4 s
    shoot("after-a-rest")
