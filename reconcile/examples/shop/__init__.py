"""A small shop: orders that need shipping, invoices that need emailing.

``models`` holds the app's own tables, ``jobs`` its two ReconciledJobs, ``mailer`` a
stand-in for an external e-mail API that honours idempotency keys, and ``demo`` the
end-to-end run behind ``reconcile demo``.
"""
