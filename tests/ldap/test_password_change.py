"""Changing an AD password through the bridge's pages: AD itself enforces and explains."""

from __future__ import annotations

from tests.ldap.conftest import cell, change_form, error_text, submit_change
from tests.ldap.directories import SambaDC, Slapd, random_password
from tests.support import LiveBridge, browser_client, form_fields

POLICY = "The new password does not meet the password policy"


def test_must_change_user_sets_a_new_password_and_is_signed_in(
    ad_bridge: LiveBridge, samba: SambaDC
) -> None:
    client = browser_client()
    start = client.get(ad_bridge.url + "/app/")
    old = samba.users["mike"].password
    redirected = client.post(ad_bridge.url + "/login", data={
        **form_fields(start.text), "username": "mike", "password": old})
    assert "/password/change?ticket=" in redirected.url
    assert "You must change your password" in redirected.text
    fields = change_form(client, redirected.url)
    assert fields["username"] == "mike"

    mismatch = submit_change(client, ad_bridge.url, fields, old, "Another-Pass-1!", "Different-1!")
    assert mismatch.status_code == 400 and error_text(mismatch) == "The new passwords do not match."
    # AD refuses a too-simple password; the refusal is explained, not shown as a code.
    weak = submit_change(client, ad_bridge.url, fields, old, "short")
    assert weak.status_code == 400 and error_text(weak).startswith(POLICY)
    wrong = submit_change(client, ad_bridge.url, fields, "not the password", random_password())
    assert wrong.status_code == 400
    assert error_text(wrong) == "The username or current password is incorrect."

    new = random_password()
    done = submit_change(client, ad_bridge.url, fields, old, new)
    assert done.status_code == 200
    assert done.url == ad_bridge.url + "/app/"  # the original request continued
    assert cell(done.text, "Username") == "mike"
    samba.users["mike"].password = new

    # The new one works at /login. (The old one is not asserted dead: like Windows for NTLM,
    # Samba keeps accepting the previous password for a while after a change.)
    again = browser_client()
    page = again.get(ad_bridge.url + "/login")
    accepted = again.post(ad_bridge.url + "/login", data={
        **form_fields(page.text), "username": "mike", "password": new})
    assert cell(accepted.text, "Username") == "mike"


def test_expired_password_is_changed_and_history_enforced(ad_bridge: LiveBridge,
                                                          samba: SambaDC) -> None:
    client = browser_client()
    page = client.get(ad_bridge.url + "/login")
    old = samba.users["pete"].password
    redirected = client.post(ad_bridge.url + "/login", data={
        **form_fields(page.text), "username": "pete", "password": old})
    assert "Your password has expired" in redirected.text
    fields = change_form(client, redirected.url)
    # Re-using the current password is refused by AD's history rule.
    same = submit_change(client, ad_bridge.url, fields, old, old)
    assert same.status_code == 400 and error_text(same).startswith(POLICY)
    new = random_password()
    done = submit_change(client, ad_bridge.url, fields, old, new)
    assert done.url == ad_bridge.url + "/app/"  # no relying party: the landing page
    samba.users["pete"].password = new


def test_voluntary_change_without_a_ticket(ad_bridge: LiveBridge, samba: SambaDC) -> None:
    client = browser_client()
    fields = change_form(client, ad_bridge.url + "/password/change")
    fields["username"] = "chris@corp.example.test"
    new = random_password()
    done = submit_change(client, ad_bridge.url, fields, samba.users["chris"].password, new)
    assert done.status_code == 200 and done.url.startswith(ad_bridge.url)
    samba.users["chris"].password = new
    # Unknown users get the same answer as a wrong current password.
    unknown = submit_change(client, ad_bridge.url, change_form(
        client, ad_bridge.url + "/password/change") | {"username": "no-such-user"},
        random_password(), random_password())
    assert error_text(unknown) == "The username or current password is incorrect."


def test_a_forged_form_changes_nothing(ad_bridge: LiveBridge, samba: SambaDC) -> None:
    client = browser_client()
    response = client.post(ad_bridge.url + "/password/change", data={
        "csrf_token": "forged", "username": "bob", "current_password": samba.users["bob"].password,
        "new_password": "Whatever-123!", "confirm_password": "Whatever-123!"})
    assert response.status_code == 400
    assert error_text(response) == "Your form expired. Please try again."


def test_openldap_password_change_uses_the_password_modify_operation(
    openldap_bridge: LiveBridge, slapd: Slapd
) -> None:
    client = browser_client()
    fields = change_form(client, openldap_bridge.url + "/password/change")
    fields["username"] = "chris"
    new = random_password()
    done = submit_change(client, openldap_bridge.url, fields, slapd.users["chris"].password, new)
    assert done.status_code == 200
    assert cell(done.text, "Username") == "chris"
    slapd.users["chris"].password = new
