# A rack app for puma under clusterd: it answers with the pid of the process
# that served the request and the clusterd slot it belongs to.
#   clusterd run --listen tcp://127.0.0.1:8000 -w 2 --cwd examples/servers/ruby \
#     --ready notify -- \
#     puma -b tcp://127.0.0.1:8000 config.ru
run lambda { |_env|
  body = "hello from puma pid #{Process.pid}, worker #{ENV.fetch('CLUSTERD_WORKER_ID', '-')}\n"
  [200, { 'content-type' => 'text/plain; charset=utf-8' }, [body]]
}
