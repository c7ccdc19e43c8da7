"""Server side of bundle security: master key, signing keys, the TUF image repository,
the director, publishing and what devices fetch. The bundle format itself lives in
`tinyfleet_agent.protocol` and is only imported here, never re-implemented."""
