"""The libraries whose own code the daemon copies, overrides or reaches into, held to the code
that was read when the copy or override was written.

Each entry names one upstream function, the project's code that depends on it, and how; its
digest is the sha256 of ``inspect.getsource()`` of the installed object, as given by the
versions in WRITTEN_AGAINST (verified against each wheel's RECORD when recorded). A failure
after an upgrade means: read the upstream change, bring the named code of ours in line with
it, then record the new digest (``.venv/bin/python tests/test_patched_libraries.py`` prints
them). docs/security.md, "Patched libraries", says why each patch exists.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent

WRITTEN_AGAINST = {"dkimpy": "1.1.8", "aiosmtpd": "1.4.6", "aiosmtplib": "5.1.3", "authres": "1.2.0",
                   "email-validator": "2.4.0", "phonenumbers": "9.0.43"}
"""The installed versions the digests below were computed from."""

TOP_LEVEL = {"dkimpy": "dkim", "aiosmtpd": "aiosmtpd", "aiosmtplib": "aiosmtplib", "authres": "authres",
             "email-validator": "email_validator", "phonenumbers": "phonenumbers"}

OURS_MODULES = ("tldops_mta.auth.dkim_verify", "tldops_mta.mail.dkim_keys", "tldops_mta.intake.smtp_server",
                "tldops_mta.mail.outbox", "tldops_mta.policy.roster_policy")
"""Where the copies and overrides live; imported so that their replacements are in place."""


@dataclass(frozen=True)
class Upstream:
    target: str
    """module:qualname of the upstream object."""
    distribution: str
    ours: tuple[str, ...]
    """module:qualname of the project's code that depends on the target's code."""
    how: str
    sha256: str


PATCHED = (
    # dkimpy: verification
    Upstream("dkim:DKIM.verify_sig", "dkimpy", ("tldops_mta.auth.dkim_verify:_Verifier.verify_sig",),
             "copied there, the key loaded through evaluated_key, which parses it once per record",
             "32c48c63dfd05f786c6cdb00d724f1e9ba0af2fa169362b87c9af616607a069b"),
    Upstream("dkim:load_pk_from_dns", "dkimpy", ("tldops_mta.auth.dkim_verify:_Verifier.verify_sig",),
             "what the copy of verify_sig does in its place (dnsfunc, then evaluate_pk)",
             "af3bac582f646481c66ca0b2a6698814f0863175224de473f671aa628585011c"),
    Upstream("dkim:evaluate_pk", "dkimpy", ("tldops_mta.auth.dkim_verify:evaluated_key",),
             "cached per (name, record), so it must stay a function of those two alone",
             "34a4ff7fe602586b2ea1c3ed0f6b45da049221a96f5f0a6bc80f92db5d541e89"),
    Upstream("dkim:DKIM.verify_sig_process", "dkimpy",
             ("tldops_mta.auth.dkim_verify:fast_rsassa_pkcs1_v1_5_verify",
              "tldops_mta.auth.dkim_verify:_Verifier.verify_sig",
              "tldops_mta.auth.dkim_verify:_Verifier.verify_sig_process"),
             "copied there without its debug logging, hashing the fields with dkim_verify's "
             "hash_headers and calling fast_rsassa_pkcs1_v1_5_verify (which signing's callers reach "
             "by its name in dkim's namespace); reads the pk, keysize, ktag and seqtlsrpt the copy of "
             "verify_sig sets",
             "ab008897178aa566719f17da464ac72f4e7aac920559a2a78ad382c9613d4820"),
    Upstream("dkim:hash_headers", "dkimpy", ("tldops_mta.auth.dkim_verify:RE_BTAG",
                                                 "tldops_mta.auth.dkim_verify:hash_headers"),
             "blanks the b= value with RE_BTAG from dkim's namespace, where dkim_verify puts an "
             "equivalent pattern that does not backtrack (signing); copied as hash_headers, which "
             "canonicalises only the fields it selects (verifying)",
             "216b8155ca91b6f828fde690bad5bdc745699a9a2a8abddebd43d7bf4038ce83"),
    Upstream("dkim.crypto:RSASSA_PKCS1_v1_5_verify", "dkimpy",
             ("tldops_mta.auth.dkim_verify:fast_rsassa_pkcs1_v1_5_verify",),
             "done again by OpenSSL, replacing it process-wide: the answers must stay the same",
             "8398ae89bb481414f0b233a20daaa9d15e297dd5cc5e0bd505e4bc1e0c920311"),
    Upstream("dkim.crypto:parse_public_key", "dkimpy",
             ("tldops_mta.auth.dkim_verify:fast_rsassa_pkcs1_v1_5_verify",),
             "makes the key dict (modulus, publicExponent) the replacement reads",
             "cbe192e778d395dc03db101b69e2b64238470779e35586bbcc508ececd19e069"),
    Upstream("dkim:rfc822_parse", "dkimpy",
             ("tldops_mta.auth.dkim_verify:rfc822_parse", "tldops_mta.auth.dkim_verify:_rfc822_parse_lines"),
             "copied (the usual header read by two regex passes, any other line by line)",
             "7f14c5bce64fa86ac63e49be581b33178a98d15ebe241789445f21e1fce8b3a6"),
    Upstream("dkim:DomainSigner.set_message", "dkimpy",
             ("tldops_mta.auth.dkim_verify:_Verifier.set_message",),
             "copied, to split the message with dkim_verify's rfc822_parse",
             "6a1ad64ef3aa79f48ad68f32b39fbfdf0f643493e40fd376eff9c242b0375543"),
    Upstream("dkim.util:parse_tag_value", "dkimpy", ("tldops_mta.auth.dkim_verify:parse_tag_value",
                                                     "tldops_mta.auth.dkim_verify:_Verifier.verify_parsed"),
             "copied; verify_parsed takes the tags it parsed in place of verify_headerprep's parse",
             "864f2d17fbfde19ce42792f8992b2d32e1d1f835230b4564427374788156ca43"),
    Upstream("dkim:DKIM.verify", "dkimpy", ("tldops_mta.auth.dkim_verify:_Verifier.verify_parsed",),
             "what verify_parsed does for one signature, its tags parsed already",
             "c5f491a1a4f8431c87a56cc4a66b6f0797dcb9fc28457a5fc4c9b03b452665cc"),
    Upstream("dkim:DKIM.verify_headerprep", "dkimpy",
             ("tldops_mta.auth.dkim_verify:_Verifier.verify_parsed",),
             "copied into verify_parsed (the attributes it sets, h= split and lowered)",
             "68d5ef213883bf6d8504599bddd5400c339633df0d499819ba1ee65927ccbb3e"),
    Upstream("dkim:validate_signature_fields", "dkimpy",
             ("tldops_mta.auth.dkim_verify:validate_signature_fields",),
             "copied for DKIM-Signature (not ARC): the same errors in the same order, with the same text",
             "28d486a6ba9e5b8da3d9bd1b25ab4040d62d3e8121aa871718df7c9bcc1cf745"),
    Upstream("dkim:select_headers", "dkimpy", ("tldops_mta.auth.dkim_verify:select_headers",),
             "copied, each name lowered once",
             "e9342396df1b1134d2c2152ae6803ca3bf5a991805f5c81c658b2b1968fc253b"),
    Upstream("dkim.canonicalization:Relaxed.canonicalize_headers", "dkimpy",
             ("tldops_mta.auth.dkim_verify:relaxed_headers", "tldops_mta.auth.dkim_verify:hash_headers"),
             "done again by relaxed_headers, which hash_headers uses for the relaxed policy",
             "7f407d4c2f13f604fa21ec94a91491910dfc6f4e2ea3afe7ddbd455ebc176f40"),
    Upstream("dkim.canonicalization:compress_whitespace", "dkimpy",
             ("tldops_mta.auth.dkim_verify:relaxed_headers",),
             "done again there (its regex compiled once, used only where a run is not one space)",
             "7ee4d82e06fc310a89e854acf9219c77e305f360bd4e0b346ee7a87d04fc76f9"),
    Upstream("dkim.canonicalization:unfold_header_value", "dkimpy",
             ("tldops_mta.auth.dkim_verify:relaxed_headers",),
             "done again there by two replacements",
             "28ed65c29158c5a40a6a1037d497c73cb039c833ff692c6bdf9d2ce200504d4f"),
    Upstream("dkim.crypto:EMSA_PKCS1_v1_5_encode", "dkimpy",
             ("tldops_mta.auth.dkim_verify:fast_rsassa_pkcs1_v1_5_verify",),
             "not called on the OpenSSL path, which raises DigestTooLargeError where this would "
             "(_DIGEST_INFO_LENGTHS)",
             "49e8cec637ea28211d6034a9d97cadee8ef8676aa2d9a48fe06c2c6d10a6f01d"),
    # dkimpy: signing
    Upstream("dkim:DKIM.gen_header", "dkimpy", ("tldops_mta.mail.dkim_keys:fast_rsassa_pkcs1_v1_5_sign",),
             "calls RSASSA_PKCS1_v1_5_sign by its name in dkim's namespace, where dkim_keys puts "
             "its own",
             "e86f61152fe5939815530ae770bc54ffd03f2616b02e5b757b54255a8a2ba4b5"),
    Upstream("dkim.crypto:RSASSA_PKCS1_v1_5_sign", "dkimpy",
             ("tldops_mta.mail.dkim_keys:fast_rsassa_pkcs1_v1_5_sign",),
             "done again by OpenSSL, replacing it process-wide: the octets must stay the same",
             "88352188b2ba2ad9476ce53da0b1644df622ac5b0b9e97292384b954853af766"),
    Upstream("dkim.crypto:parse_private_key", "dkimpy",
             ("tldops_mta.mail.dkim_keys:fast_rsassa_pkcs1_v1_5_sign",),
             "makes the key dict (modulus, exponents, primes, coefficient) the replacement reads",
             "b44546bb74c4cae3ae4205c504579da91c24f8dac70d114a7dcb7104b23e970b"),
    # aiosmtpd
    Upstream("aiosmtpd.smtp:SMTP.__init__", "aiosmtpd",
             ("tldops_mta.intake.smtp_server:Protocol.__init__",
              "tldops_mta.intake.smtp_server:Protocol.__dir__",
              "tldops_mta.intake.smtp_server:Intake.__dir__"),
             "builds its command and hook tables from dir() of the protocol and the handler and "
             "reads handle_EHLO's signature, which smtp_server answers in advance",
             "8a9ca80f23ad9bf273e58e284170e9f919dc6269b280ca0624ac0603a8ad3604"),
    Upstream("aiosmtpd.smtp:SMTP.connection_made", "aiosmtpd",
             ("tldops_mta.intake.smtp_server:Protocol.connection_made",
              "tldops_mta.intake.smtp_server:Protocol._reset_timeout"),
             "entered again after STARTTLS with the transport set (the override lets that "
             "through); calls _reset_timeout once (the command count starts at -1 for it); "
             "starts _handle_client as _handler_coroutine",
             "77a45df5065bba343a040b6f6c88de8907b40c80bc03727e7f18ede20d19f4bf"),
    Upstream("aiosmtpd.smtp:SMTP.smtp_STARTTLS", "aiosmtpd",
             ("tldops_mta.intake.smtp_server:Protocol.connection_made",),
             "sets the transport before the TLS layer enters connection_made again",
             "6565289f4131fa132ad3c517e8f2933a490043fc11da08a5be5dd73efc491bec"),
    Upstream("aiosmtpd.smtp:SMTP._handle_client", "aiosmtpd",
             ("tldops_mta.intake.smtp_server:Protocol._reset_timeout",
              "tldops_mta.intake.smtp_server:Protocol.push",
              "tldops_mta.intake.smtp_server:Protocol.handle_exception"),
             "calls _reset_timeout once per valid command (the command count); answers a "
             "command's exception with handle_exception's reply (_PathRefused); runs as "
             "_handler_coroutine, which push cancels once the connection is closed",
             "0e4d096403af6c74c87b2fe722c213884e2140a9388e95feb05aec2f39e05556"),
    Upstream("aiosmtpd.smtp:SMTP._reset_timeout", "aiosmtpd",
             ("tldops_mta.intake.smtp_server:Protocol._reset_timeout",),
             "private, overridden to count commands",
             "fef19b94d28dff319ca0ca9ecc1884e8f419d9f016d1d25380b01d5e85ff3c78"),
    Upstream("aiosmtpd.smtp:SMTP._timeout_cb", "aiosmtpd",
             ("tldops_mta.intake.smtp_server:Protocol._timeout_cb",),
             "private, overridden to say why before closing",
             "10a7351f9bec281831442cd03ddb4f403d0d3f18b939976ea4f83b9ff557c10d"),
    Upstream("aiosmtpd.smtp:SMTP._getaddr", "aiosmtpd", ("tldops_mta.intake.smtp_server:Protocol._getaddr",),
             "private, replaced by the strict reading of smtp_paths; the override keeps its "
             "results ((None, None) for a local part over local_part_limit)",
             "0aeb21c56ac1260e784e430a340459c83c23640a85965e7b8de3e1ada74d85f5"),
    Upstream("aiosmtpd.smtp:SMTP.smtp_MAIL", "aiosmtpd",
             ("tldops_mta.intake.smtp_server:Protocol.smtp_MAIL",
              "tldops_mta.intake.smtp_server:Protocol._getaddr"),
             "calls _getaddr and reads its (address, rest)",
             "80dd938e7791acfb31bc6eef174b9c1af96d7bac54fe103198ec6ce3440e8043"),
    Upstream("aiosmtpd.smtp:SMTP.smtp_RCPT", "aiosmtpd",
             ("tldops_mta.intake.smtp_server:Protocol.smtp_RCPT",
              "tldops_mta.intake.smtp_server:Protocol._getaddr"),
             "calls _getaddr and reads its (address, rest)",
             "a0d6605883c0e608df4fe4376f284be97e36a9b257d6401dd0116ec972c3e0ea"),
    Upstream("aiosmtpd.smtp:SMTP.smtp_DATA", "aiosmtpd",
             ("tldops_mta.intake.smtp_server:Protocol.smtp_DATA",
              "tldops_mta.intake.smtp_server:Protocol.data_received"),
             "its reader keeps every fragment of an unended line, which LongLineGuard (in "
             "data_received) cuts short",
             "3a33f30d3fd6d02f39c7d78a08288bffea9170525b62e2161568041ae7e018df"),
    # aiosmtplib
    Upstream("aiosmtplib.protocol:SMTPProtocol.execute_data_command", "aiosmtplib",
             ("tldops_mta.mail.outbox:_data",),
             "done again without normalising the message, with its private _command_lock and "
             "_response_pending",
             "a55f9634add2db0870711d0cac99ccba3240e58cb14deabdf7b9b12148b3060a"),
    # authres
    Upstream("authres.core:QuotableValue.quote_if_needed", "authres",
             ("tldops_mta.auth.dkim_verify:_Quoted.quote_if_needed",),
             "what _Quoted stands in for (quoting a value that holds @ too)",
             "c608912a7ed5ed0b761c27ddf7d5f738d6a312f5c0d1557ce06d5864e6e84e29"),
    Upstream("authres.core:AuthenticationResult.__str__", "authres",
             ("tldops_mta.auth.dkim_verify:_Quoted", "tldops_mta.auth.dkim_verify:authentication_results"),
             "what authentication_results writes again (quote_if_needed on the reason as it was set, "
             "which is how _Quoted takes effect); tests/test_authentication_results.py compares them",
             "9b44c16f01ba3668a5999d3e4b1831cfce00aaf7e8f4273c01173f9172cb239c"),
    # email-validator and phonenumbers: the roster policy's shortcuts (tests/test_policy_equivalence.py
    # compares their answers)
    Upstream("email_validator.validate_email:validate_email", "email-validator",
             ("tldops_mta.policy.roster_policy:plain_email",),
             "answered without it for plain ASCII addresses: the answer must stay the same",
             "f416bc836bc926c5cef412e0a0c3343a8cc8e26088c0be10581bd3873802a032"),
    Upstream("email_validator.syntax:split_email", "email-validator",
             ("tldops_mta.policy.roster_policy:plain_email",), "splits at the one '@'",
             "8016f1c00cfceb81f08e78390ec21dd5bdaa054cdb7746fefa08740259febe70"),
    Upstream("email_validator.syntax:validate_email_local_part", "email-validator",
             ("tldops_mta.policy.roster_policy:plain_email",), "an ASCII dot-atom comes back as it is",
             "17786c42b9b692eb3d78f7c335ace0b50159c009330cd4f67acda30f72508722"),
    Upstream("email_validator.syntax:validate_email_domain_name", "email-validator",
             ("tldops_mta.policy.roster_policy:plain_email",),
             "LDH labels come back lower-cased; '--', special-use names and long labels are its own",
             "a54c0a297e940c0d56f3da8604d3c2a180f7a85d457abbdee9e8a3b5bbcb78c8"),
    Upstream("email_validator.syntax:validate_email_length", "email-validator",
             ("tldops_mta.policy.roster_policy:plain_email",), "254 octets, the same for an ASCII address",
             "80601ce3e060773ce1f7b16c989afe8cae6a196af8d03d7452ff82e55315dc74"),
    Upstream("phonenumbers.phonenumberutil:normalize_digits_only", "phonenumbers",
             ("tldops_mta.policy.roster_policy:normalize_digits_only",),
             "replaced process-wide in phonenumberutil, where parse calls it by its name: the "
             "answers must stay the same",
             "d04d26d16733d85a6e2da100daddf36a8ceef270c69260e73a7b28122a728a5a"),
    Upstream("phonenumbers.phonenumberutil:_maybe_strip_extension", "phonenumbers",
             ("tldops_mta.policy.roster_policy:_maybe_strip_extension",),
             "replaced process-wide in phonenumberutil, where parse calls it by its name; ours "
             "relies on _EXTN_PATTERN as recorded in EXTN_PATTERN_SHA256",
             "7a87aae1f355658617ad280482ae6bacf0bc5428c40d50c1867199699b79aa89"),
)

THIS_FILE = "tests/test_patched_libraries.py"


KEPT = {"phonenumbers.phonenumberutil:normalize_digits_only":
        "tldops_mta.policy.roster_policy:_upstream_normalize_digits_only",
        "phonenumbers.phonenumberutil:_maybe_strip_extension":
        "tldops_mta.policy.roster_policy:_upstream_maybe_strip_extension"}
"""Upstream functions replaced in their own module by ours: where ours keeps the original."""


def resolve(path: str) -> Any:
    """The object at module:qualname; for an upstream target replaced in place, the original."""
    path = KEPT.get(path, path)
    module, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def digest(obj: Any) -> str:
    return hashlib.sha256(inspect.getsource(obj).encode("utf-8")).hexdigest()


def installed(distribution: str) -> str:
    return metadata.version(distribution)


def _ours_everywhere() -> set[str]:
    return {path for entry in PATCHED for path in entry.ours}


@pytest.mark.parametrize("entry", PATCHED, ids=[e.target for e in PATCHED])
def test_upstream_code_is_what_the_patch_was_written_against(entry: Upstream) -> None:
    actual = digest(resolve(entry.target))
    dist = entry.distribution
    ours = " and ".join(entry.ours)
    assert actual == entry.sha256, (
        f"{entry.target} of {dist} {installed(dist)} differs from the code of {dist} "
        f"{WRITTEN_AGAINST[dist]} that {ours} was written against ({entry.how}). Read the upstream "
        f"change in {inspect.getsourcefile(resolve(entry.target))}, bring {ours} in line with it "
        f"(and the docstring that names the version followed), then set this entry's sha256 in "
        f"{THIS_FILE} to {actual} and WRITTEN_AGAINST[{dist!r}] to {installed(dist)!r}.")


@pytest.mark.parametrize("distribution", sorted(WRITTEN_AGAINST))
def test_installed_version_is_within_the_pin(distribution: str) -> None:
    """The pin in pyproject.toml has an upper bound, and admits both the version installed and
    the one the digests were recorded from."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    reqs = [Requirement(d) for d in deps if Requirement(d).name == distribution]
    assert len(reqs) == 1, f"pyproject.toml should name {distribution} once among the dependencies"
    spec = reqs[0].specifier
    assert any(s.operator == "<" for s in spec), (
        f"{distribution} is patched ({THIS_FILE}) and needs an upper bound in pyproject.toml")
    assert spec.contains(installed(distribution)), (
        f"{distribution} {installed(distribution)} is installed, outside the pin {spec}")
    assert spec.contains(WRITTEN_AGAINST[distribution]), (
        f"the digests were recorded from {distribution} {WRITTEN_AGAINST[distribution]}, outside "
        f"the pin {spec}")


def test_each_named_part_of_ours_exists() -> None:
    """A copy or override that moved or was renamed is named here by its new path."""
    missing = []
    for path in sorted(_ours_everywhere()):
        try:
            resolve(path)
        except (ImportError, AttributeError):
            missing.append(path)
    assert not missing, f"{THIS_FILE} names code that is not there: {missing}; give its new path"


def test_every_replacement_inside_a_library_is_recorded() -> None:
    """Anything of ours put into one of these libraries' modules (as dkim_verify and dkim_keys
    replace dkimpy's RSA functions) must be named in PATCHED, with the upstream code it relies on."""
    for module in OURS_MODULES:
        importlib.import_module(module)
    ours = _ours_everywhere()
    unrecorded = []
    for name, module in sorted(sys.modules.items()):
        if module is None or name.partition(".")[0] not in TOP_LEVEL.values():
            continue
        for attr, value in vars(module).items():
            owner = getattr(value, "__module__", None)
            if isinstance(owner, str) and owner.startswith("tldops_mta"):
                path = f"{owner}:{getattr(value, '__qualname__', attr)}"
                if path not in ours:
                    unrecorded.append(f"{name}.{attr} = {path}")
    assert not unrecorded, (
        f"replaced inside a library and not named in {THIS_FILE}: {unrecorded}; add an entry for the "
        "upstream code each relies on")


@pytest.mark.parametrize(("ours", "upstream"), [
    ("tldops_mta.intake.smtp_server:Protocol", "aiosmtpd.smtp:SMTP"),
    ("tldops_mta.auth.dkim_verify:_Verifier", "dkim:DKIM"),
])
def test_every_private_override_is_recorded(ours: str, upstream: str) -> None:
    """A subclass overriding a private method of its library base depends on that method's
    code: each such override must be named in PATCHED."""
    cls, base = resolve(ours), resolve(upstream)
    recorded = _ours_everywhere()
    unrecorded = [f"{ours}.{name}" for name in sorted(vars(cls))
                  if name.startswith("_") and not name.startswith("__") and hasattr(base, name)
                  and f"{ours}.{name}" not in recorded]
    assert not unrecorded, (
        f"private methods of {upstream} overridden and not named in {THIS_FILE}: {unrecorded}; add "
        "an entry with the digest of the upstream method")


if __name__ == "__main__":
    # The digests of what is installed now, for recording after an upgrade has been reviewed.
    for d in sorted(WRITTEN_AGAINST):
        print(f"{d} {installed(d)}")
    for e in PATCHED:
        print(f"{e.target} {digest(resolve(e.target))}")
