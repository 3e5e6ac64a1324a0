"""The edge's HTTP face: ingest, query API and the LAN dashboard (grows in issue 4)."""
