"""Unit tests of `flrunner.security.sealed` and of the wire fields that carry sealed payloads."""

from __future__ import annotations

import msgpack
import pytest
import zmq
from nacl.public import Box, PrivateKey, PublicKey

from flrunner.protocol import Channel, Field, Op, Rc, admin_ops, aux_ops, job_ops, site_ops  # noqa: F401
from flrunner.errors import BadRequest
from flrunner.aux.payload import decode_shareable, encode_shareable
from flrunner.security.errors import SealedError
from flrunner.security.sealed import (KEY_BYTES, SEALED_KEY_BYTES, key_from_z85, new_secret_key, open_reply,
                                      open_request, public_key_of, reply_context, request_context, seal_reply,
                                      seal_request, site_request_context)
from flrunner.shareable import Shareable

MARKER = b"UNIT-MARKER-0123456789"


class Party:
    """A key pair, as a job process (ephemeral) or a site (its kit) holds it."""

    def __init__(self) -> None:
        self.secret = new_secret_key()
        self.public = public_key_of(self.secret)


@pytest.fixture
def job() -> Party:
    return Party()


@pytest.fixture
def sites() -> dict[str, Party]:
    return {"site-1": Party(), "site-2": Party()}


def payload_frames() -> list:
    """A Shareable's frames: its map and one large binary value in a frame of its own."""
    frames = encode_shareable(Shareable({"note": MARKER.decode(), "blob": MARKER * 5000}))
    assert len(frames) == 2
    return frames


def flipped(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x80]) + data[at + 1:]


def test_one_ciphertext_for_every_site_and_each_opens_it_with_its_own_key(job, sites):
    frames = payload_frames()
    blob, sealed = seal_request(frames, job.secret, {name: s.public for name, s in sites.items()})
    assert sorted(sealed) == sorted(sites)
    assert all(len(k) == SEALED_KEY_BYTES for k in sealed.values())
    assert MARKER not in blob and all(MARKER not in k for k in sealed.values())
    for name, site in sites.items():
        opened = open_request([blob], sealed[name], site.secret, job.public)
        assert opened == [bytes(f) for f in frames]
        assert decode_shareable(opened).get("blob") == MARKER * 5000


def test_a_zmq_frame_is_opened_like_bytes(job, sites):
    blob, sealed = seal_request([b"head"], job.secret, {"site-1": sites["site-1"].public})
    assert open_request([zmq.Frame(blob)], sealed["site-1"], sites["site-1"].secret, job.public) == [b"head"]


def test_a_site_cannot_open_a_key_sealed_for_another_site(job, sites):
    blob, sealed = seal_request([b"head"], job.secret, {"site-1": sites["site-1"].public})
    with pytest.raises(SealedError, match="sealed key does not open with this site's key"):
        open_request([blob], sealed["site-1"], sites["site-2"].secret, job.public)


def test_a_request_that_claims_another_sender_does_not_open(job, sites):
    blob, sealed = seal_request([b"head"], job.secret, {"site-1": sites["site-1"].public})
    with pytest.raises(SealedError, match="sealed key does not open"):
        open_request([blob], sealed["site-1"], sites["site-1"].secret, Party().public)


@pytest.mark.parametrize("where", [0, 30, -1])
def test_any_flipped_byte_of_the_ciphertext_or_of_a_sealed_key_is_refused(job, sites, where):
    site = sites["site-1"]
    blob, sealed = seal_request(payload_frames(), job.secret, {"site-1": site.public})
    with pytest.raises(SealedError, match=r"^its payload does not open with its key \(tampered with\)$"):
        open_request([flipped(blob, where % len(blob))], sealed["site-1"], site.secret, job.public)
    key = sealed["site-1"]
    with pytest.raises(SealedError, match="its sealed key does not open"):
        open_request([blob], flipped(key, where % len(key)), site.secret, job.public)


def test_a_sealed_request_is_exactly_one_frame(job, sites):
    blob, sealed = seal_request([b"head"], job.secret, {"site-1": sites["site-1"].public})
    for frames in ([], [blob, b"extra"]):
        with pytest.raises(SealedError, match=f"one ciphertext frame, this one has {len(frames)}"):
            open_request(frames, sealed["site-1"], sites["site-1"].secret, job.public)


def test_replies_open_only_with_the_key_of_the_site_that_sealed_them(job, sites):
    reply = seal_reply(payload_frames(), sites["site-1"].secret, job.public)
    assert len(reply) == 1 and MARKER not in reply[0]
    assert decode_shareable(open_reply(reply, job.secret, sites["site-1"].public)).get("note") == MARKER.decode()
    with pytest.raises(SealedError, match="does not open with the sender's key"):
        open_reply(reply, job.secret, sites["site-2"].public)  # site-2 did not send it
    with pytest.raises(SealedError, match="does not open with the sender's key"):
        open_reply([flipped(reply[0], 40)], job.secret, sites["site-1"].public)


def test_a_provisioned_curve_key_pair_is_a_sealing_key_pair(job):
    public_z85, secret_z85 = zmq.curve_keypair()
    site_secret, site_public = key_from_z85(secret_z85), key_from_z85(public_z85.decode())
    assert public_key_of(site_secret) == site_public
    blob, sealed = seal_request([b"head"], job.secret, {"site": site_public})
    assert open_request([blob], sealed["site"], site_secret, job.public) == [b"head"]


@pytest.mark.parametrize("bad", ["short", b"\x00" * 40, "x" * 45, "é" * 40, 42])
def test_malformed_z85_keys_are_refused(bad):
    with pytest.raises(SealedError, match="Z85 key"):
        key_from_z85(bad)


@pytest.mark.parametrize("public", [b"", b"x" * 31, b"x" * 33, None])
def test_malformed_public_keys_are_named_not_crashed_on(job, public):
    with pytest.raises(SealedError, match=f"public key of 'site-1' is not a {KEY_BYTES}-byte"):
        seal_request([b"head"], job.secret, {"site-1": public})
    with pytest.raises(SealedError, match="public key of the sender"):
        open_request([b"x" * 100], b"k" * SEALED_KEY_BYTES, job.secret, public)


def test_an_opened_payload_that_is_not_a_list_of_frames_is_refused(job, sites):
    """Only a key holder can produce it, but it is decoded with limits all the same."""
    site = sites["site-1"]
    box = Box(PrivateKey(site.secret), PublicKey(job.public))
    for plain in (msgpack.packb({"not": "frames"}), msgpack.packb(["text"]), b"\xc1", msgpack.packb([b""] + [b"x"] * 65)):
        with pytest.raises(SealedError, match="opened payload is not a list of frames"):
            open_reply([bytes(box.encrypt(plain))], job.secret, site.public)


def test_the_aux_ops_carry_sealed_keys_checked_field_by_field():
    base = {"topic": "t", "timeout": 1.0}
    args = aux_ops.FROM_JOB.validate({**base, "sealed": {"site-1": b"k" * SEALED_KEY_BYTES}, "sender_key": b"p" * KEY_BYTES})
    assert args["sealed"] == {"site-1": b"k" * SEALED_KEY_BYTES}
    with pytest.raises(BadRequest, match=r"field 'sealed.site-1' must be bytes, got str"):
        aux_ops.FROM_JOB.validate({**base, "sealed": {"site-1": "text"}})
    with pytest.raises(BadRequest, match=r"field 'sealed.site-1' is longer than"):
        aux_ops.FROM_JOB.validate({**base, "sealed": {"site-1": b"k" * 1000}})
    with pytest.raises(BadRequest, match="field 'sealed' must have string keys, got bytes"):
        aux_ops.FROM_JOB.validate({**base, "sealed": {b"site-1": b"k"}})
    with pytest.raises(BadRequest, match="field 'sender_key' is longer than"):
        aux_ops.TO_SITE.validate({**base, "job_id": "j", "sealed_key": b"k", "sender_key": b"p" * 1000})


def test_a_request_opens_only_for_the_job_and_topic_it_was_sealed_for(job, sites):
    site = sites["site-1"]
    blob, sealed = seal_request([b"head"], job.secret, {"site-1": site.public}, context=request_context("job-a", "train"))
    assert open_request([blob], sealed["site-1"], site.secret, job.public,
                        context=request_context("job-a", "train")) == [b"head"]
    for other in (request_context("job-a", "validate"), request_context("job-b", "train"), b""):
        with pytest.raises(SealedError, match="sealed for another request, job or topic"):
            open_request([blob], sealed["site-1"], site.secret, job.public, context=other)


def test_a_reply_opens_only_as_the_answer_to_its_own_request(job, sites):
    site = sites["site-1"]
    first, _ = seal_request([b"one"], job.secret, {"site-1": site.public})
    second, _ = seal_request([b"two"], job.secret, {"site-1": site.public})
    reply = seal_reply([b"answer"], site.secret, job.public, context=reply_context(first))
    assert open_reply(reply, job.secret, site.public, context=reply_context(first)) == [b"answer"]
    with pytest.raises(SealedError, match="sealed for another request"):
        open_reply(reply, job.secret, site.public, context=reply_context(second))


def test_a_box_opens_with_the_key_of_either_end_so_a_request_is_bound_to_its_direction(job, sites):
    site = sites["site-1"]
    to_site, keys = seal_request([b"head"], job.secret, {"site-1": site.public}, context=request_context("j", "t"))
    # The job itself can open what it sealed for the site, as if the site had sealed it for the job...
    assert open_request([to_site], keys["site-1"], job.secret, site.public, context=request_context("j", "t")) == \
        [b"head"]
    # ...so a request sent back to its sender must not open there as the other side's request.
    with pytest.raises(SealedError, match="sealed for another request, job or topic"):
        open_request([to_site], keys["site-1"], job.secret, site.public, context=site_request_context("j", "t"))
    to_engine, keys = seal_request([b"head"], site.secret, {"server": job.public},
                                   context=site_request_context("j", "t"))
    assert open_request([to_engine], keys["server"], job.secret, site.public,
                        context=site_request_context("j", "t")) == [b"head"]
    with pytest.raises(SealedError, match="sealed for another request, job or topic"):
        open_request([to_engine], keys["server"], site.secret, job.public, context=request_context("j", "t"))


def test_the_ops_of_a_sites_secure_request_and_of_the_job_key_check_their_fields():
    key, sealed_key = b"p" * KEY_BYTES, b"k" * SEALED_KEY_BYTES
    hello = {"job_id": "j", "secret": "s", "pid": 1}
    assert job_ops.HELLO.validate({**hello, "sealing_key": key})["sealing_key"] == key
    assert job_ops.HELLO.validate(hello)["sealing_key"] is None
    with pytest.raises(BadRequest, match="op 'hello': field 'sealing_key' must be bytes or null, got str"):
        job_ops.HELLO.validate({**hello, "sealing_key": "text"})
    site_aux = {"token": "t", "job_id": "j", "topic": "t", "timeout": 1.0}
    assert aux_ops.FROM_SITE.validate({**site_aux, "sealed_key": sealed_key})["sealed_key"] == sealed_key
    with pytest.raises(BadRequest, match="op 'aux': field 'sealed_key' is longer than"):
        aux_ops.FROM_SITE.validate({**site_aux, "sealed_key": b"k" * 1000})
    child_aux = {"site": "s", "topic": "t", "timeout": 1.0}
    assert aux_ops.TO_JOB.validate({**child_aux, "sealed_key": sealed_key})["sealed_key"] == sealed_key
    with pytest.raises(BadRequest, match="field 'sealed_key' must be bytes or null, got list"):
        aux_ops.TO_JOB.validate({**child_aux, "sealed_key": [1]})
    assert site_ops.JOB_KEY.validate({"job_id": "j", "key": key}) == {"job_id": "j", "key": key}
    with pytest.raises(BadRequest, match="op 'job_key': missing field 'key'"):
        site_ops.JOB_KEY.validate({"job_id": "j"})
    start = {"job_id": "j", "job_name": "n", "app": "a"}
    assert site_ops.START_JOB.validate({**start, "job_key": key})["job_key"] == key
    with pytest.raises(BadRequest, match="op 'start_job': field 'job_key' is longer than"):
        site_ops.START_JOB.validate({**start, "job_key": b"p" * 1000})


def test_key_pairs_made_without_pynacl_are_the_ones_libsodium_makes():
    from flrunner.security import curve

    for _ in range(20):
        secret = curve.new_secret_key()
        assert curve.public_key_of(secret) == bytes(PrivateKey(secret).public_key)
    with pytest.raises(SealedError, match="a secret key is 32 bytes"):
        curve.public_key_of(b"short")


def test_a_job_process_loads_neither_pynacl_nor_the_kit_modules_at_start():
    """Start-up cost of every cold job process: PyNaCl only once it seals, kits and zmq.auth never."""
    import subprocess
    import sys

    heavy = ("nacl", "cffi", "zmq.auth", "flrunner.security.kit", "flrunner.security.provisioning")
    code = ("import sys, child.main, child.engine, child.session, child.runner; "
            "from flrunner.security.curve import new_secret_key, public_key_of; public_key_of(new_secret_key()); "
            f"print(sorted(m for m in sys.modules if m.startswith({heavy!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_reply_is_bound_to_its_requests_nonce_and_tag_whatever_carries_it(job, sites):
    from flrunner.security.sealed import REQUEST_ID_BYTES

    blob, _ = seal_request([b"x" * 100_000], job.secret, {"site-1": sites["site-1"].public})
    context = reply_context(blob)
    assert context == reply_context(zmq.Frame(blob)) == reply_context(bytearray(blob))
    assert context.endswith(blob[:REQUEST_ID_BYTES]) and len(context) < 64  # the head only, not the 100 kB
