"""What the client portal needs: look up a link (read only), redeem it, report a sign-in (P7, W1).

Looking a link up changes nothing: mail scanners and link previews fetch every link they see.
The token travels in the body, never in a URL (URLs end up in access logs).
"""

from __future__ import annotations

from fastapi import APIRouter

from engine.api.auth import Portal, with_db
from engine.api.schemas import Redeemed, RedeemIn, SignInIn, TokenIn
from engine.operations import invitations
from engine.operations.invitations import TokenInfo

router = APIRouter(prefix="/v1/portal", tags=["portal"])


@router.post("/tokens/verify", response_model=TokenInfo)
@with_db
def verify(body: TokenIn, who: Portal) -> TokenInfo:
    """Whose link it is, for what and until when; 404 unknown, 410 expired, used or revoked."""
    return invitations.verify_token(who.practice, body.token)


@router.post("/tokens/redeem", response_model=Redeemed)
@with_db
def redeem(body: RedeemIn, who: Portal) -> Redeemed:
    """Use a link once: set the password and sign the client in; every other link of the client dies."""
    return Redeemed(client_id=invitations.redeem_token(who.practice, body.token, body.password, by=who.actor))


@router.post("/sign-ins", response_model=Redeemed)
@with_db
def sign_in(body: SignInIn, who: Portal) -> Redeemed:
    """The portal reports a sign-in: the invitation's workflow ends, no reminder follows (W1)."""
    invitations.record_sign_in(who.practice, body.client_id, by=who.actor)
    return Redeemed(client_id=body.client_id)
