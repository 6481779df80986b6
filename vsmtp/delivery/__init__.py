"""Delivery: the scheduler picks due work from the queue projection, workers carry it out
through a transport and journal the outcome. Transports are plain functions (maildir.py)."""

from __future__ import annotations

from .scheduler import DeliveryJob, Scheduler, serve_delivery

__all__ = ["DeliveryJob", "Scheduler", "serve_delivery"]
