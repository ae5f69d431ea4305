"""What requests cost and who may spend: usage counters, prices, governance (allow-list,
budgets), rate limits and the usage ledger."""
