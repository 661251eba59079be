"""Seed a freshly provisioned (not yet running) Samba AD DC in one process.

Runs under Debian's /usr/bin/python3 with Samba's own bindings (not the project's venv):
    /usr/bin/python3 samba_seed.py SMB_CONF < seed.json
The JSON names users (with their state), groups (with members) and password policies.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time

import ldb
from samba.auth import system_session
from samba.param import LoadParm
from samba.samdb import SamDB

FILETIME_OFFSET = 116444736000000000


def filetime(unix_seconds: float) -> int:
    """Unix time as a Windows FILETIME."""
    return int(unix_seconds * 10_000_000) + FILETIME_OFFSET


def _dn_of(db: SamDB, base: str, name: str) -> ldb.Dn:
    found = db.search(base, expression=f"(sAMAccountName={ldb.binary_encode(name)})",
                      attrs=["dn"])
    return found[0].dn


def main() -> None:
    """Create users, groups, policies; backdate passwords where the seed asks for it."""
    lp = LoadParm()
    lp.load(sys.argv[1])
    seed = json.load(sys.stdin)
    db = SamDB(url=lp.private_path("sam.ldb"), session_info=system_session(), lp=lp)
    base = str(db.domain_dn())
    users_ou = "CN=Users," + base
    for user in seed["users"]:
        db.newuser(
            user["sam"],
            user["password"],
            givenname=user.get("given"),
            surname=user.get("sn"),
            mailaddress=user.get("mail"),
        )
        flt = f"(sAMAccountName={user['sam']})"
        if user.get("cn"):
            # A CN that needs RFC 4514 escaping; newuser would build the DN unescaped.
            old_dn = db.search(base, expression=flt, attrs=["dn"])[0].dn
            new_dn = ldb.Dn(db, str(old_dn))
            new_dn.set_component(0, "CN", user["cn"])
            db.rename(old_dn, new_dn)
        if user.get("consistency_guid"):
            dn = db.search(base, expression=flt, attrs=["dn"])[0].dn
            message = ldb.Message()
            message.dn = dn
            message["ms-DS-ConsistencyGuid"] = ldb.MessageElement(
                bytes.fromhex(user["consistency_guid"]), ldb.FLAG_MOD_REPLACE,
                "ms-DS-ConsistencyGuid",
            )
            db.modify(message)
        if user.get("disabled"):
            db.disable_account(flt)
        if user.get("must_change"):
            db.force_password_change_at_next_login(flt)
        if user.get("expired_account"):
            db.setexpiry(flt, -3600)
    for group in seed["groups"]:
        db.newgroup(group["name"])
    for group in seed["groups"]:
        # Samba's add_remove_group_members puts names into its filter unescaped.
        group_dn = _dn_of(db, base, group["name"])
        message = ldb.Message()
        message.dn = group_dn
        message["member"] = ldb.MessageElement(
            [str(_dn_of(db, base, name)) for name in group.get("members", [])],
            ldb.FLAG_MOD_ADD, "member",
        )
        if group.get("members"):
            db.modify(message)
    for pso in seed.get("psos", []):
        db.add({
            "dn": f"CN={pso['name']},CN=Password Settings Container,CN=System,{base}",
            "objectClass": "msDS-PasswordSettings",
            "msDS-PasswordSettingsPrecedence": "1",
            "msDS-PasswordReversibleEncryptionEnabled": "FALSE",
            "msDS-PasswordHistoryLength": "24",
            "msDS-PasswordComplexityEnabled": "TRUE",
            "msDS-MinimumPasswordLength": "7",
            "msDS-MinimumPasswordAge": "0",
            "msDS-MaximumPasswordAge": str(-pso["max_age_days"] * 86400 * 10**7),
            "msDS-LockoutThreshold": "0",
            "msDS-LockoutObservationWindow": str(-60 * 10**7),
            "msDS-LockoutDuration": str(-60 * 10**7),
            "msDS-PSOAppliesTo": f"CN={pso['applies_to']},{users_ou}",
        })
    backdate = [u for u in seed["users"] if u.get("password_age_days")]
    del db
    if backdate:
        # Samba only accepts 0 or -1 for pwdLastSet, so an expired password is made by editing
        # the partition below the module stack while the DC is not running.
        path = glob.glob(os.path.join(lp.private_path("sam.ldb.d"), "DC=*.ldb"))
        raw = ldb.Ldb([p for p in path if "CONFIGURATION" not in p][0], options=["modules:"])
        for user in backdate:
            found = raw.search(base.upper(), scope=ldb.SCOPE_SUBTREE,
                               expression=f"(sAMAccountName={user['sam']})", attrs=["dn"])
            message = ldb.Message()
            message.dn = found[0].dn
            message["pwdLastSet"] = ldb.MessageElement(
                str(filetime(time.time() - user["password_age_days"] * 86400)),
                ldb.FLAG_MOD_REPLACE, "pwdLastSet",
            )
            raw.modify(message)
    print(json.dumps({"base_dn": base}))


if __name__ == "__main__":
    main()
