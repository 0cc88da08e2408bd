"""The boot payload, module by module in the order it runs: gather (evidence, peers,
verdict), recovery (unseal, lock, store, image, rootfs, credentials), record; payload
carries out recover.core.plan."""
