# Built on lib/aws (endpoints, SigV4 signing, the credential chain and STS), shared with the
# sqs and sns sources.
list(APPEND PLUGIN_USES aws)
