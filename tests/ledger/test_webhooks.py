"""Signed webhooks end to end: a real ledger, the real delivery loop and aiohttp sender, and the example
receiver (a real local HTTP server verifying every signature) — no mock anywhere."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from credits.alerts.v1 import alerts_pb2 as apb

from ledger_service.domain.webhooks import RetrySchedule, is_public, signature, signature_header, verify
from ledger_service.webhooks.dispatcher import DeliverySettings, RunningDispatcher, start_dispatcher
from ledger_service.webhooks.example_receiver import PATH, ExampleReceiver
from ledger_service.webhooks.http_sender import HttpSender
from tests.ledger.alert_helpers import alerts_stub, create_rule, debit, events
from tests.ledger.conftest import Ledger

FAST = DeliverySettings(RetrySchedule(base_s=0.2, cap_s=1.0, max_attempts=30), poll_s=0.1, lease_s=5)


@pytest.fixture
async def dispatcher(ledger: Ledger) -> AsyncIterator[Callable[[DeliverySettings], asyncio.Future[RunningDispatcher]]]:
    started: list[RunningDispatcher] = []

    async def start(settings: DeliverySettings = FAST) -> RunningDispatcher:
        running = await start_dispatcher(ledger.dsn, settings)
        started.append(running)
        return running

    yield start  # type: ignore[misc]
    for running in started:
        await running.stop()


async def _endpoint(ledger: Ledger, url: str, key: str = "e1", **kw: object) -> apb.WebhookEndpoint:
    return await alerts_stub(ledger).CreateWebhookEndpoint(apb.CreateWebhookEndpointRequest(
        idempotency_key=key, endpoint_id=kw.pop("endpoint_id", "hook"), url=url, **kw),  # type: ignore[arg-type]
        metadata=ledger.md)


async def _wait(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def _deliveries(ledger: Ledger, endpoint_id: str = "hook") -> list[apb.WebhookDelivery]:
    page = await alerts_stub(ledger).ListWebhookDeliveries(
        apb.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id), metadata=ledger.md)
    return list(page.deliveries)


def is_public_name_private() -> bool:
    try:
        return not is_public(socket.gethostbyname(socket.gethostname()))
    except OSError:
        return False


def test_signature_recipe_and_replayed_timestamp() -> None:
    body, secret, t = b'{"id":"e1"}', "whsec_test", 1_700_000_000
    header = signature_header([secret], t, body)
    assert header == f"t={t},v1={signature(secret, t, body)}"
    assert verify(secret, header, body, now=t + 10)
    assert not verify(secret, header, body, now=t + 301)             # an old request replayed later
    assert not verify(secret, header, body + b" ", now=t)            # a changed body
    assert not verify("whsec_other", header, body, now=t)            # another secret
    assert not verify(secret, header.replace(f"t={t}", f"t={t + 1}"), body, now=t)  # a moved timestamp
    both = signature_header(["whsec_new", secret], t, body)            # rotation overlap: two v1
    assert verify(secret, both, body, now=t) and verify("whsec_new", both, body, now=t)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://169.254.169.254/latest",
                                 "http://[::1]/x", "http://localhost:8080/x", "http://[::ffff:10.0.0.1]/x"])
async def test_private_targets_are_refused_unless_allowed(ledger: Ledger, url: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _endpoint(ledger, url)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "url" in (err.value.details() or "")
    made = await _endpoint(ledger, url, key="e2", allow_private_targets=True)
    assert made.secret.startswith("whsec_")


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http://user:pw@example.com/", "example.com", ""])
async def test_bad_urls_are_refused(ledger: Ledger, url: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _endpoint(ledger, url)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "url" in (err.value.details() or "")


async def test_sender_refuses_a_name_resolving_to_a_private_address() -> None:
    """The check happens again at delivery: a name that resolves to loopback (this host's name) is refused."""
    if not is_public_name_private():
        pytest.skip("this host's name does not resolve to a private address")
    receiver = ExampleReceiver(["whsec_x"])
    port = await receiver.start()
    try:
        async with HttpSender(timeout_s=5) as sender:
            refused = await sender.post(f"http://{socket.gethostname()}:{port}{PATH}", b"{}", {}, allow_private=False)
            assert not refused.delivered and refused.error.startswith("refused"), refused
            stamp = int(time.time())
            ok = await sender.post(f"http://127.0.0.1:{port}{PATH}", b"{}",
                                   {"Credits-Signature": signature_header(["whsec_x"], stamp, b"{}"),
                                    "Credits-Event-Id": "e"}, allow_private=True)
            assert ok.delivered, ok
    finally:
        await receiver.stop()
    assert receiver.rejected == 0 and receiver.deliveries["e"] == 1


async def test_receiver_down_then_up_gets_each_event_once(ledger: Ledger, dispatcher: Callable) -> None:
    receiver = ExampleReceiver([])
    port = await receiver.start()
    await receiver.stop()  # down: connection refused on that port
    hook = await _endpoint(ledger, f"http://127.0.0.1:{port}{PATH}", allow_private_targets=True,
                           event_types=["balance.low", "balance.recovered"])
    receiver.secrets.append(hook.secret)
    await ledger.account("acme")
    await create_rule(ledger, rule_id="low", account_id="acme", unit="USD", kind=apb.LOW_BALANCE,
                      thresholds=["10.00", "5.00"])
    await create_rule(ledger, rule_id="zero", account_id="acme", unit="USD", kind=apb.DEPLETED)  # not subscribed
    await ledger.grant("acme", "20.00", key="g1")
    await debit(ledger, "acme", "16.00", "d1")    # 4.00: below both
    await ledger.grant("acme", "10.00", key="g2")  # 14.00: both recover
    await debit(ledger, "acme", "14.00", "d2")    # 0: below both again, and depleted
    stored = [e for e in await events(ledger) if e.event_type in ("balance.low", "balance.recovered")]
    assert len(stored) == 6
    await dispatcher(FAST)
    await _wait_failures(ledger)
    await receiver.start(port)  # up again
    try:
        await _wait(lambda: len(receiver.events) == 6)
        await asyncio.sleep(0.5)  # nothing more arrives
    finally:
        await receiver.stop()
    assert set(receiver.events) == {e.event_id for e in stored}
    assert all(n == 1 for n in receiver.deliveries.values()) and receiver.rejected == 0
    assert {b["type"] for b in receiver.events.values()} == {"balance.low", "balance.recovered"}
    found = await _recorded(ledger, 6)  # each outcome is written as its POST ends, beside the next ones
    assert len(found) == 6 and all(d.status == apb.DELIVERED and d.attempts >= 2 for d in found)
    assert all(d.last_http_status == 200 for d in found)
    await _attempt_log(ledger, found)


async def _attempt_log(ledger: Ledger, found: list[apb.WebhookDelivery]) -> None:
    """ListWebhookAttempts: every POST of every delivery, in pages, oldest first; one delivery's alone."""
    stub, log, token = alerts_stub(ledger), [], ""
    while True:
        page = await stub.ListWebhookAttempts(apb.ListWebhookAttemptsRequest(endpoint_id="hook", page_size=4,
                                                                             page_token=token), metadata=ledger.md)
        log += page.attempts
        token = page.next_page_token
        if not token:
            break
    assert len(log) == sum(d.attempts for d in found)
    assert [a.at.ToDatetime() for a in log] == sorted(a.at.ToDatetime() for a in log)
    for d in found:
        mine = await stub.ListWebhookAttempts(apb.ListWebhookAttemptsRequest(
            endpoint_id="hook", delivery_id=d.delivery_id), metadata=ledger.md)
        assert [a.attempt for a in mine.attempts] == list(range(1, d.attempts + 1))
        *failed, last = mine.attempts
        assert last.http_status == 200 and not last.error and last.duration_ms >= 0
        assert failed and all(a.http_status == 0 and "Connect" in a.error for a in failed)
        assert [a for a in log if a.delivery_id == d.delivery_id] == list(mine.attempts)
    for request, code in [(apb.ListWebhookAttemptsRequest(endpoint_id="ghost"), grpc.StatusCode.NOT_FOUND),
                          (apb.ListWebhookAttemptsRequest(endpoint_id="hook", delivery_id="e@other"),
                           grpc.StatusCode.INVALID_ARGUMENT),
                          (apb.ListWebhookAttemptsRequest(endpoint_id="hook", page_token="forged"),
                           grpc.StatusCode.INVALID_ARGUMENT)]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListWebhookAttempts(request, metadata=ledger.md)
        assert err.value.code() == code, request


async def _recorded(ledger: Ledger, n: int, timeout_s: float = 30) -> list[apb.WebhookDelivery]:
    """The deliveries once `n` of them are recorded DELIVERED (or the deadline passed: the caller asserts)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await _deliveries(ledger)
        if sum(d.status == apb.DELIVERED for d in found) >= n or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def _wait_failures(ledger: Ledger) -> None:
    """Until every delivery has failed at least once (the receiver is down)."""
    deadline = time.monotonic() + 60
    while True:
        found = await _deliveries(ledger)
        if found and all(d.attempts >= 1 and d.last_error for d in found):
            return
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.1)


async def test_rotation_overlap_and_dead_letter_redelivery(ledger: Ledger, dispatcher: Callable) -> None:
    receiver = ExampleReceiver([])
    port = await receiver.start()
    try:
        hook = await _endpoint(ledger, f"http://127.0.0.1:{port}{PATH}", allow_private_targets=True)
        rotated = await alerts_stub(ledger).RotateWebhookSecret(apb.RotateWebhookSecretRequest(
            idempotency_key="rot", endpoint_id="hook", overlap_s=3600), metadata=ledger.md)
        assert rotated.secret != hook.secret and rotated.active_secrets == 2
        receiver.secrets.append(hook.secret)  # a receiver not yet switched still verifies (overlap)
        receiver.fail_next = 3                 # it answers 503 three times: dead after 3 attempts
        await ledger.account("acme")
        await create_rule(ledger, rule_id="zero", account_id="acme", unit="USD", kind=apb.DEPLETED)
        await ledger.grant("acme", "1.00", key="g1")
        await debit(ledger, "acme", "1.00", "d1")
        await dispatcher(DeliverySettings(RetrySchedule(base_s=0.1, cap_s=0.2, max_attempts=3), poll_s=0.1))
        await _wait_dead(ledger)
        assert receiver.events == {}
        (dead,) = await _deliveries(ledger)
        assert dead.attempts == 3 and dead.last_http_status == 503
        again = await alerts_stub(ledger).RedeliverWebhook(apb.RedeliverWebhookRequest(
            idempotency_key="re1", delivery_id=dead.delivery_id), metadata=ledger.md)
        assert again.status == apb.PENDING
        await _wait(lambda: len(receiver.events) == 1)
        receiver.secrets[:] = [rotated.secret]  # switched: the new secret verifies too
        await debit_after_regrant(ledger)
        # the regrant re-arms the rule (balance.recovered), the debit fires it again (balance.depleted #2);
        # both may arrive within one poll, so wait for both rather than for a count in between
        await _wait(lambda: len(receiver.events) >= 3)
        assert sorted(e["type"] for e in receiver.events.values()) == [
            "balance.depleted", "balance.depleted", "balance.recovered"]
    finally:
        await receiver.stop()
    assert receiver.rejected == 0


async def debit_after_regrant(ledger: Ledger) -> None:
    await ledger.grant("acme", "1.00", key="g2")
    await debit(ledger, "acme", "1.00", "d2")


async def _wait_dead(ledger: Ledger) -> None:
    deadline = time.monotonic() + 60
    while not any(d.status == apb.DEAD for d in await _deliveries(ledger)):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


def test_the_readme_recipe_verifies_what_the_ledger_signs() -> None:
    """The verification snippet of README "Alerts and signed webhooks", run as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("**Verifying a webhook**", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)  # the documented recipe itself
    recipe = scope["verify"]
    assert callable(recipe)
    body, now = b'{"id":"low/acme/below:1000/1"}', int(time.time())
    header = signature_header(["whsec_old", "whsec_new"], now, body)
    assert recipe("whsec_new", header, body) and recipe("whsec_old", header, body)
    assert not recipe("whsec_new", header, body + b"x")
    assert not recipe("whsec_new", signature_header(["whsec_new"], now - 3600, body), body)  # replayed


async def test_the_receiver_of_creditctl_up_verifies_with_the_endpoints_secrets(
        ledger: Ledger, dispatcher: Callable, capsys: pytest.CaptureFixture[str]) -> None:
    """`creditctl up --webhook-receiver`: secrets read from the ledger per request, so an endpoint created
    after the receiver started verifies at once; each event is printed."""
    import contextlib

    from service_runtime.temporal_server import reserve_port
    from stack.launcher import _webhook_receiver

    port = reserve_port()
    async with contextlib.AsyncExitStack() as running:
        shown = await _webhook_receiver(ledger.dsn, port, running)
        url = shown.split()[0]
        await _endpoint(ledger, url, allow_private_targets=True)
        await ledger.account("acme")
        await create_rule(ledger, rule_id="zero", account_id="acme", unit="USD", kind=apb.DEPLETED)
        await ledger.grant("acme", "1.00", key="g1")
        await debit(ledger, "acme", "1.00", "d1")
        await dispatcher(FAST)
        deadline = time.monotonic() + 60
        while not any(d.status == apb.DELIVERED for d in await _deliveries(ledger)):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    out = capsys.readouterr().out
    assert "webhook: " in out and '"type": "balance.depleted"' in out


async def test_many_events_at_once_each_post_recorded_once(ledger: Ledger, dispatcher: Callable) -> None:
    """Many POSTs out at once while outcomes are written in batches: every outcome is recorded (attempt 1,
    DELIVERED) and no event is sent twice (a lost record would resend it after the lease)."""
    receiver = ExampleReceiver([])
    port = await receiver.start()
    try:
        hook = await _endpoint(ledger, f"http://127.0.0.1:{port}{PATH}", allow_private_targets=True)
        receiver.secrets.append(hook.secret)
        await create_rule(ledger, rule_id="low", unit="USD", kind=apb.LOW_BALANCE, thresholds=["50.00", "20.00"])
        await dispatcher(DeliverySettings(RetrySchedule(base_s=0.2, cap_s=1.0, max_attempts=30), poll_s=0.1,
                                          lease_s=2, batch=7))  # short lease: a lost record shows as a resend
        names = [f"a{i:02d}" for i in range(40)]
        for name in names:
            await ledger.account(name)
            await ledger.grant(name, "100.00", key=f"g-{name}")
        await asyncio.gather(*(debit(ledger, name, "85.00", f"d-{name}") for name in names))  # 15.00: both
        await _wait(lambda: len(receiver.events) == 80)
        found = await _recorded(ledger, 80)
        await asyncio.sleep(2.5)  # past the lease: nothing is sent again
    finally:
        await receiver.stop()
    assert len(found) == 80 and all(d.status == apb.DELIVERED and d.attempts == 1 for d in found)
    assert sorted(receiver.deliveries.values()) == [1] * 80
