"""Meta's WhatsApp webhook (``GET`` and ``POST /v1/whatsapp/webhook``, tag ``whatsapp``).

No user's token: Meta proves itself with the app secret (``X-Hub-Signature-256``) on the POST
and the verify token on the subscription GET (rules: ``dispatch.messaging.webhook``; what is
recorded: ``dispatch.messaging.inbound``).

Answers, in the order they are decided:

* the channel is off (no ``WAKALA_WHATSAPP_APP_SECRET`` for the POST, no
  ``WAKALA_WHATSAPP_VERIFY_TOKEN`` for the GET): 503 ``not_configured`` saying which setting;
* a body over ``WAKALA_MAX_BODY_BYTES``: 413 ``too_large``, never buffered whole;
* a missing, foreign or wrong signature: 401 ``bad_signature`` naming the header, nothing read
  further;
* a signed body we cannot use (not JSON, not a WhatsApp notification, more items than we take):
  **200**, with the refusal in the answer and in the log. Meta redelivers anything but a 200
  for days, and the same bytes will not read better the next time; the signature says it came
  from Meta, so the problem is logged for us to look at rather than bounced;
* otherwise the notification is recorded and the answer says what happened (``recorded``,
  ``duplicates``, receipts ``applied`` / ``kept`` / ``unknown``, and ``refused``: the items
  that could not be read, each with its reason and field).

The POST records before it answers: a few statements per tenant, well inside the time Meta
waits, and a database outage then answers 503 so that Meta redelivers instead of the message
being lost in a queue of our own. Every refusal is counted in
``wakala_whatsapp_webhook_refused_total`` by reason.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from dispatch.api.common import call
from dispatch.core.errors import NOT_CONFIGURED, Refusal
from dispatch.core.metrics import WHATSAPP_WEBHOOK_REFUSED
from dispatch.messaging.inbound import WhatsAppInbox
from dispatch.messaging.webhook import (
    SIGNATURE_HEADER,
    parse_notification,
    verify_signature,
    verify_subscription,
)
from dispatch.web.http import parse_json, read_body

__all__ = ["PATH", "router"]

log = logging.getLogger(__name__)

router = APIRouter()

PATH = "/v1/whatsapp/webhook"
CHANNEL = "whatsapp"          # the label body-size refusals are counted under (dispatch.web.http)
REFUSED_IN_ANSWER = 20        # item refusals listed in an answer (all are counted and logged)


def _refused(refusal: Refusal) -> Refusal:
    WHATSAPP_WEBHOOK_REFUSED.labels(refusal.reason).inc()
    return refusal


def _off(setting: str) -> Refusal:
    return _refused(Refusal(503, NOT_CONFIGURED, f"the WhatsApp channel is off: {setting} is not set"))


@router.get(PATH, tags=["whatsapp"], summary="Meta's webhook subscription check (hub.challenge)",
            response_class=PlainTextResponse)
async def subscription(request: Request) -> PlainTextResponse:
    token = request.app.state.engine.whatsapp_verify_token
    if not token:
        raise _off("WAKALA_WHATSAPP_VERIFY_TOKEN")
    try:
        challenge = verify_subscription(token, request.query_params)
    except Refusal as refusal:
        raise _refused(refusal) from None
    return PlainTextResponse(challenge)


@router.post(PATH, tags=["whatsapp"], summary="Meta's webhook: inbound messages and status receipts (signed)",
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": {"type": "object"},
                 "example": {"object": "whatsapp_business_account", "entry": [{"id": "1029384756", "changes": [{
                     "field": "messages", "value": {
                         "messaging_product": "whatsapp",
                         "metadata": {"display_phone_number": "27110000000", "phone_number_id": "1122334455"},
                         "messages": [{"from": "27821234567", "id": "wamid.HBgLMjc4MjEyMzQ1NjcVAgASGBQ",
                                       "timestamp": "1767225600", "type": "text", "text": {"body": "STOP"}}]}}]}]},
             }}}})
async def notification(request: Request) -> Any:
    state = request.app.state
    engine = state.engine
    if not engine.whatsapp_app_secret:
        raise _off("WAKALA_WHATSAPP_APP_SECRET")
    try:
        raw = await read_body(request, engine.max_body_bytes, CHANNEL)
        verify_signature(engine.whatsapp_app_secret, raw, request.headers.get(SIGNATURE_HEADER))
    except Refusal as refusal:
        raise _refused(refusal) from None
    try:
        note = parse_notification(parse_json(raw, engine.max_body_bytes, CHANNEL, "body"), time.time())
    except Refusal as refusal:
        _refused(refusal)
        log.warning("whatsapp webhook: a signed notification refused whole (%s at %s): %s",
                    refusal.reason, refusal.field, refusal.message)
        return JSONResponse({"recorded": 0, "refused": [_item(refusal)]})
    for refusal in note.refused:
        _refused(refusal)
        log.warning("whatsapp webhook: item refused (%s at %s): %s", refusal.reason, refusal.field, refusal.message)
    outcome = await call(WhatsAppInbox(state.db).handle(note))
    return {**outcome.as_dict(), "skipped_changes": note.skipped,
            "refused": [_item(r) for r in note.refused[:REFUSED_IN_ANSWER]]}


def _item(refusal: Refusal) -> dict[str, Any]:
    return {"reason": refusal.reason, "field": refusal.field, "message": refusal.message}
