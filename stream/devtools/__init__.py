"""Development and demo tools, not needed in production.

`servers` starts the embedded broker and Redis, `synthetic_crm` generates a
believable CRM event stream, `simulate` publishes it paced by event time,
`demo` runs the whole stack in one command, `reference_tables` regenerates the
README's reference tables.
"""
