package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/clusterd/clusterd/master"
)

// The client commands: each is one request on the control socket.

func newStatusCommand() *cobra.Command {
	f := &controlFlags{}
	var asJSON bool
	cmd := clientCommand("status", "Show the workers of a running cluster", noArgs, f)
	cmd.Flags().BoolVar(&asJSON, "json", false, `print JSON: {"master": {...}, "listeners": [...], "workers": [{"slot": ..., "pid": ..., ...}]}`)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		var st master.ControlStatusReply
		if err := f.call(cmd.Context(), master.ControlRequest{Op: master.ControlStatus, Slot: -1}, &st, nil); err != nil {
			return err
		}
		if asJSON {
			return writeStatusJSON(cmd.OutOrStdout(), st, time.Now())
		}
		return writeStatusTable(cmd.OutOrStdout(), st, time.Now())
	}
	return cmd
}

// statusJSON is the document of `status --json`.
type statusJSON struct {
	Master struct {
		PID           int     `json:"pid"`
		Name          string  `json:"name"`
		Version       string  `json:"version"`
		Started       string  `json:"started"`
		UptimeSeconds float64 `json:"uptime_seconds"`
		Upgrades      int     `json:"upgrades"`
		Exe           string  `json:"exe"`
	} `json:"master"`
	Listeners []string       `json:"listeners"`
	Workers   []workerStatus `json:"workers"`
}

type workerStatus struct {
	Slot          int     `json:"slot"`
	PID           int     `json:"pid"`
	State         string  `json:"state"`
	Generation    int     `json:"generation"`
	Replacing     bool    `json:"replacing"`
	Online        bool    `json:"online"`
	UptimeSeconds float64 `json:"uptime_seconds"`
	Restarts      int     `json:"restarts"`
	RSSBytes      int64   `json:"rss_bytes"`
	CPUPercent    float64 `json:"cpu_percent"`
	LastExit      string  `json:"last_exit"`
	LastCause     string  `json:"last_cause"`
}

func writeStatusJSON(w io.Writer, st master.ControlStatusReply, now time.Time) error {
	var doc statusJSON
	doc.Master.PID, doc.Master.Name, doc.Master.Version = st.PID, st.Name, st.Version
	doc.Master.Started = st.Started.UTC().Format(time.RFC3339Nano)
	doc.Master.UptimeSeconds = now.Sub(st.Started).Seconds()
	doc.Master.Upgrades, doc.Master.Exe = st.Upgrades, st.Exe
	doc.Listeners = append([]string{}, st.Listeners...)
	doc.Workers = []workerStatus{}
	for _, cw := range st.Workers {
		doc.Workers = append(doc.Workers, workerStatus{
			Slot: cw.Slot, PID: cw.PID, State: cw.State, Generation: cw.Generation,
			Replacing: cw.Replacing, Online: cw.Online,
			UptimeSeconds: now.Sub(cw.Started).Seconds(), Restarts: cw.Restarts,
			RSSBytes: cw.RSS, CPUPercent: cw.CPU, LastExit: cw.LastExit, LastCause: cw.LastCause,
		})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}

func writeStatusTable(w io.Writer, st master.ControlStatusReply, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SLOT\tPID\tSTATE\tGEN\tUPTIME\tRESTARTS\tRSS\tCPU\tLAST EXIT")
	for _, cw := range st.Workers {
		state := cw.State
		if cw.Replacing {
			state += " (new)"
		}
		rss, cpu := "-", "-"
		if cw.RSS >= 0 {
			rss = formatBytes(cw.RSS)
		}
		if cw.CPU >= 0 {
			cpu = strconv.FormatFloat(cw.CPU, 'f', 1, 64) + "%"
		}
		last := cw.LastExit
		if cw.LastCause != "" {
			last = cw.LastCause
		}
		if last == "" {
			last = "-"
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%d\t%s\t%d\t%s\t%s\t%s\n", cw.Slot, cw.PID, state, cw.Generation,
			formatUptime(now.Sub(cw.Started)), cw.Restarts, rss, cpu, last)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	listeners := "none"
	if len(st.Listeners) > 0 {
		listeners = strings.Join(st.Listeners, ", ")
	}
	upgraded := ""
	if st.Upgrades > 0 {
		upgraded = ", upgraded in place once"
		if st.Upgrades > 1 {
			upgraded = fmt.Sprintf(", upgraded in place %d times", st.Upgrades)
		}
	}
	_, err := fmt.Fprintf(w, "listeners: %s\nmaster: %s pid %d, up %s, version %s%s\n",
		listeners, st.Name, st.PID, formatUptime(now.Sub(st.Started)), st.Version, upgraded)
	return err
}

// formatUptime renders d as pm2 does: 12s, 5m, 3h, 2D.
func formatUptime(d time.Duration) string {
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d.Minutes())) + "m"
	case d < 24*time.Hour:
		return strconv.Itoa(int(d.Hours())) + "h"
	}
	return strconv.Itoa(int(d.Hours()/24)) + "D"
}

// formatBytes renders n in binary units: 512B, 12.3MiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + "B"
	}
	v, i := float64(n)/unit, 0
	for v >= unit && i < 3 {
		v /= unit
		i++
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + [...]string{"KiB", "MiB", "GiB", "TiB"}[i]
}

func newLsCommand() *cobra.Command {
	f := &controlFlags{}
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the clusters running on this host (the control sockets this user can reach)",
		Args:  noArgs,
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		dir, err := master.ControlDir(os.Getenv, os.Getuid())
		if err != nil {
			return &controlError{exitNoMaster, err}
		}
		tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tPID\tWORKERS\tUPTIME\tSOCKET")
		now := time.Now()
		for _, p := range listSockets(dir) {
			f.control = p
			var st master.ControlStatusReply
			err := f.call(cmd.Context(), master.ControlRequest{Op: master.ControlStatus, Slot: -1}, &st, nil)
			if err != nil {
				var ce *controlError
				if errors.As(err, &ce) {
					continue // stale or not ours: not a cluster this user can reach
				}
				return err
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\n", st.Name, st.PID, len(st.Workers), formatUptime(now.Sub(st.Started)), p)
		}
		return tw.Flush()
	}
	return cmd
}

func newReloadCommand() *cobra.Command {
	f := &controlFlags{}
	var wait bool
	cmd := clientCommand("reload", "Replace every worker, one batch at a time, as SIGHUP does", noArgs, f)
	cmd.Long = `Reload starts a rolling reload of a running cluster. With --wait it prints each
worker's progress as it happens and exits when the reload ended:
  0  completed: every slot runs a new worker
  3  aborted: a new worker failed to become ready; the old ones keep serving
  4  another reload is already in progress (also without --wait)`
	cmd.Flags().BoolVar(&wait, "wait", false, "print per-worker progress and wait until the reload completed or was aborted")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		out := cmd.OutOrStdout()
		var r master.ControlReloadReply
		err := f.call(cmd.Context(), master.ControlRequest{Op: master.ControlReload, Wait: wait, Slot: -1}, &r,
			func(p master.ControlProgress) error {
				_, err := fmt.Fprintln(out, p.Text)
				return err
			})
		if err != nil {
			return err
		}
		switch {
		case r.Resumed:
			_, err = fmt.Fprintln(out, "reload: workers started again after a maintenance stop")
		case !wait:
			_, err = fmt.Fprintln(out, "reload started")
		default:
			_, err = fmt.Fprintf(out, "reload completed: %d workers replaced in %s\n", len(r.Slots), time.Duration(r.DurationMS)*time.Millisecond)
		}
		return err
	}
	return cmd
}

func newScaleCommand() *cobra.Command {
	f := &controlFlags{}
	cmd := clientCommand("scale N|+N|-N", "Set the number of workers, or add or remove some", cobra.ArbitraryArgs, f)
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usagef("scale takes one argument, N, +N or -N; got %d", len(args))
		}
		return nil
	}
	// "-1" is an argument, not a flag.
	cmd.Flags().SetInterspersed(false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		req, err := parseScale(args[0])
		if err != nil {
			return err
		}
		var r master.ControlScaleReply
		if err := f.call(cmd.Context(), req, &r, nil); err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "scaled to %d workers\n", r.Workers)
		return err
	}
	return cmd
}

// parseScale parses N, +N or -N.
func parseScale(s string) (master.ControlRequest, error) {
	req := master.ControlRequest{Op: master.ControlScale, Slot: -1}
	rel := strings.HasPrefix(s, "+") || strings.HasPrefix(s, "-")
	n, err := strconv.Atoi(s)
	switch {
	case err != nil:
		return req, usagef("scale %q: want a number N, +N or -N", s)
	case rel && n == 0:
		return req, usagef("scale %q: a change of 0 workers", s)
	case !rel && n < 1:
		return req, usagef("scale %q: want at least 1 worker", s)
	}
	req.N, req.Relative = n, rel
	return req, nil
}

func newStopCommand() *cobra.Command {
	f := &controlFlags{}
	var timeout time.Duration
	cmd := clientCommand("stop", "Stop a running cluster gracefully and wait until every worker exited", noArgs, f)
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "kill the workers that still run after this long (default: the master's --kill-timeout)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if timeout < 0 {
			return usagef("--timeout %v: must not be negative", timeout)
		}
		req := master.ControlRequest{Op: master.ControlStop, TimeoutMS: timeout.Milliseconds(), Slot: -1}
		if timeout > 0 && req.TimeoutMS == 0 {
			req.TimeoutMS = 1
		}
		if err := f.call(cmd.Context(), req, nil, nil); err != nil {
			return err
		}
		_, err := fmt.Fprintln(cmd.OutOrStdout(), "stopped")
		return err
	}
	return cmd
}

func newSignalCommand() *cobra.Command {
	f := &controlFlags{}
	var slot int
	cmd := clientCommand("signal SIG", "Send a signal to every worker, or to one with --slot", cobra.ArbitraryArgs, f)
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return usagef("signal takes one argument, the signal (TERM, SIGUSR1, 10); got %d", len(args))
		}
		return nil
	}
	cmd.Flags().IntVar(&slot, "slot", -1, "the worker slot to signal (default: every slot)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		sig, err := parseSignal(args[0])
		if err != nil {
			return usagef("signal: %w", err)
		}
		if cmd.Flags().Changed("slot") && slot < 0 {
			return usagef("--slot %d: must not be negative", slot)
		}
		var r master.ControlSignalReply
		req := master.ControlRequest{Op: master.ControlSignal, Signal: int(sig), Slot: slot}
		if err := f.call(cmd.Context(), req, &r, nil); err != nil {
			return err
		}
		var s []string
		for _, n := range r.Slots {
			s = append(s, strconv.Itoa(n))
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "sent SIG%s to worker %s\n", strings.TrimPrefix(unix.SignalName(sig), "SIG"), strings.Join(s, ", "))
		return err
	}
	return cmd
}

func newLogsCommand() *cobra.Command {
	f := &controlFlags{}
	var slot int
	var follow bool
	cmd := clientCommand("logs", "Print the last lines of the workers' output; -f follows new ones", noArgs, f)
	cmd.Flags().IntVar(&slot, "slot", -1, "only this worker slot (default: every slot)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new lines until interrupted")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if cmd.Flags().Changed("slot") && slot < 0 {
			return usagef("--slot %d: must not be negative", slot)
		}
		out := cmd.OutOrStdout()
		err := f.call(cmd.Context(), master.ControlRequest{Op: master.ControlLogs, Slot: slot, Follow: follow}, nil,
			func(p master.ControlProgress) error {
				if p.Dropped > 0 {
					if _, err := fmt.Fprintf(out, "... %d lines dropped (reading too slowly)\n", p.Dropped); err != nil {
						return err
					}
				}
				if p.Log == nil {
					return nil
				}
				l := p.Log
				_, err := fmt.Fprintf(out, "%s [w%d pid %d %s] %s\n", l.Time.Format("15:04:05.000"), l.Slot, l.PID, l.Stream, l.Text)
				return err
			})
		if follow && cmd.Context().Err() != nil {
			return nil // interrupted: the normal end of -f
		}
		return err
	}
	return cmd
}

// scaleArgs lets `clusterd scale -2` mean a change of -2 workers, not an
// unknown flag: a negative number among scale's arguments moves behind
// "--", where flag parsing ends.
func scaleArgs(args []string) []string {
	if len(args) < 2 || args[0] != "scale" || slices.Contains(args, "--") {
		return args
	}
	var flags, nums []string
	for _, a := range args[1:] {
		if len(a) > 1 && a[0] == '-' && strings.Trim(a[1:], "0123456789") == "" {
			nums = append(nums, a)
		} else {
			flags = append(flags, a)
		}
	}
	if len(nums) == 0 {
		return args
	}
	out := append([]string{"scale"}, flags...)
	return append(append(out, "--"), nums...)
}
