package clusterd

import (
	_ "github.com/hashicorp/go-hclog"
	_ "github.com/spf13/cobra"
	_ "github.com/vmihailenco/msgpack/v5"
	_ "golang.org/x/sys/unix"
)
