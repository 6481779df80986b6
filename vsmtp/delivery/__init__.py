"""Delivery: the scheduler picks due work from the queue projection, workers carry it out
through a transport (transport.py, transports/) and journal the outcome."""

from __future__ import annotations

from .scheduler import Scheduler, serve_delivery
from .transport import DeliveryJob

__all__ = ["DeliveryJob", "Scheduler", "serve_delivery"]
