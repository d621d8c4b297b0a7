"""What the tests share, in one place (issue 21: one way to do each thing).

* `serving`: an ASGI app on uvicorn on a loopback port (`Served`, and `served_in_thread` for a
  synchronous fixture);
* `accounts`: a stand-in for accounts as the other services read it (`StubAccounts`: the JWKS, the
  revocation list, account owners);
* `bank`: a whole bank as a newcomer starts it, `bank up` in its own process (`BankProcess`,
  `bank_env`); a bank whose parts can be broken one by one is `bank.cluster.BankCluster`, which the
  bank test, chaos and benchmarks use too;
* `waiting`: `eventually`, waiting for a condition without asserting how long it took;
* `database`: a migrated database of one's own on the session's PostgreSQL (`migrated_database`);
* `consuming`: a service's consumer runner driven without a transport (`DrivenConsumer`), and
  `counting_statements`;
* `raw_http`: a hand-rolled HTTP/1.1 server answering with whatever bytes a test chooses (`RawHttpServer`),
  for clients that must meet answers no real server gives.

Free ports come from `bank.infra.ports.free_port`, which non-test code (bank/cluster.py, bench/)
uses as well; it is not here because tests are not the only ones that need it.
"""
