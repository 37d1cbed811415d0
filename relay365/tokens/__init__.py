"""Access tokens for upstream mailboxes: classification of identity-platform errors (`classify`),
the persistent refresh-token store (`store`) and the async, single-flight manager (`manager`)."""
