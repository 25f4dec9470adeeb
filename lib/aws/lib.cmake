# lib/aws: AWS endpoints, request signing (on engine/sigv4.c), the credential chain and answer
# readers shared by the sqs and sns sources and the awsLambda trigger. libcurl and OpenSSL are
# the engine's own, so nothing more is needed.
