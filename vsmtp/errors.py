"""vsmtp's exceptions, in one tree.

    VsmtpError                 anything vsmtp raises on purpose
    ├── ConfigError            a bad configuration: the message names file, line and key
    ├── PluginError            a plugin could not be found or loaded
    └── DeliveryError          a delivery attempt failed
        ├── TemporaryFailure   try again later (4xx, I/O trouble)
        └── PermanentFailure   give up on this recipient (5xx)

The sans-IO protocol layer has its own tree (vsmtp.smtp.errors) and the journal its own
(vsmtp_journal.errors): neither depends on this package.
"""

from __future__ import annotations


class VsmtpError(Exception):
    """Base of vsmtp's own exceptions."""


class ConfigError(VsmtpError):
    """The configuration is wrong; str() says where and why."""


class PluginError(VsmtpError):
    """A plugin named in the configuration could not be loaded."""


class DeliveryError(VsmtpError):
    """A delivery attempt failed."""


class TemporaryFailure(DeliveryError):
    """The attempt may succeed later."""


class PermanentFailure(DeliveryError):
    """The attempt will never succeed for this recipient."""
