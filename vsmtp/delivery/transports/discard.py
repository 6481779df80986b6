"""The discard and error transports (Postfix's discard(8) and error(8)): for tests and for
routing rules. discard journals the recipient as delivered and writes nothing; error fails
it with the route's text, so the sender gets a bounce."""

from __future__ import annotations

from collections.abc import Sequence

from ...queue import policy
from ..transport import Delivery, Result, Services


class Discard:
    kind = "discard"
    concurrent = False
    max_recipients = 0

    def __init__(self, services: Services) -> None:
        pass

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        return [Result.all(d, "delivered", "discarded", stage="route", detail="discarded") for d in deliveries]


class Error:
    kind = "error"
    concurrent = False
    max_recipients = 0

    def __init__(self, services: Services) -> None:
        pass

    async def deliver(self, deliveries: Sequence[Delivery]) -> list[Result]:
        results = []
        for delivery in deliveries:
            assert isinstance(delivery.route, policy.ErrorRoute)
            route = delivery.route
            if route.temporary:
                results.append(Result.all(delivery, "deferred", route.reason, enhanced="4.3.5", stage="route"))  # 4.3.5: configuration
            else:
                results.append(Result.all(delivery, "failed", route.reason, enhanced="5.0.0", stage="route"))
        return results
