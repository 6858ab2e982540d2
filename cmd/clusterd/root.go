package main

import (
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/clusterd/clusterd/master"
)

const rootLong = `clusterd is a multi-process cluster supervisor for Linux: it binds listening
sockets, starts N copies of any server command on them, restarts the ones
that crash and replaces them all, one by one, on SIGHUP, without refusing a
connection.

Start a cluster with "clusterd run"; "clusterd run --help" lists its flags,
their CLUSTERD_* environment variables and the signals the master acts on.
"clusterd status", "reload", "scale", "stop", "signal" and "logs" control a
running cluster through its control socket; "clusterd ls" lists the clusters
on this host.`

// newRootCommand builds the whole command tree.
func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "clusterd",
		Short: "Run any server binary as a cluster of worker processes",
		Long:  rootLong,
		// Errors are printed once, by main, as `clusterd: <error>`.
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version(),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return cmd.Help()
		},
	}
	root.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &usageError{err}
	})
	root.AddCommand(
		newRunCommand(),
		newStatusCommand(),
		newLsCommand(),
		newReloadCommand(),
		newUpgradeCommand(),
		newScaleCommand(),
		newStopCommand(),
		newSignalCommand(),
		newLogsCommand(),
		newVersionCommand(),
		newExecWorkerCommand(),
	)
	return root
}

// newExecWorkerCommand is the hidden mode a master starts its workers in:
// `clusterd exec-worker -- COMMAND [ARGS...]` sets LISTEN_PID to its own pid
// and execs COMMAND. main dispatches it before building the command tree;
// this command keeps the name reserved and documented in one place.
func newExecWorkerCommand() *cobra.Command {
	return &cobra.Command{
		Use:                master.ExecWorkerArg + " -- COMMAND [ARGS...]",
		Short:              "Exec a worker command with LISTEN_PID set (used by the master)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			return master.ExecWorker(args)
		},
	}
}

// noArgs is cobra.NoArgs as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("%s takes no arguments, got %q", cmd.CommandPath(), args[0])
	}
	return nil
}

// flagNames lists the names of a flag set's flags, for tests and help.
func flagNames(fs *pflag.FlagSet) []string {
	var names []string
	fs.VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
	return names
}
