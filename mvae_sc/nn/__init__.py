"""The MVAE math: experts, fusion rules, likelihoods and the ELBO. No AnnData in here."""
