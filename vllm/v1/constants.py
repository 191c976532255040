"""The -1 sentinels shared by the runner, the kernels, the samplers and speculative decoding."""

# Token id of a rejected or padding position in a verified [R, k + 1] output row.
PLACEHOLDER_TOKEN_ID = -1

# A slot / staging row / commit slot that means "do not write" (padding, not staged, rejected).
PADDING_SLOT_ID = -1

# A scheduled input token the host does not know yet: sampled by the step still running on the
# device (asynchronous scheduling). The runner fills it in from that step's output, on the device.
UNKNOWN_TOKEN_ID = -1
