"""The MuData side: what setup_mudata records and validates, and minibatches from it."""
