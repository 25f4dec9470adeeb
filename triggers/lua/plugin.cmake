# No C of its own: the script's actions run on the http and log triggers' executors.
set(PLUGIN_EXECUTOR FALSE)
list(APPEND PLUGIN_REQUIRES trigger:http trigger:log)
