// Command watchgate is the watchgate binary: an etcd v3 watch fan-out gateway and the workers
// behind it.
//
//	watchgate dev       everything in one process on loopback (embedded etcd and NATS)
//	watchgate ingest    one ingest worker: tails an etcd cluster into the event log
//	watchgate gateway   one gateway replica: serves etcd's gRPC API from the event log
//	watchgate bench     measures a scenario on etcd, etcd's gRPC proxy and watchgate side by side
//
// Every flag can also be set by an environment variable, WATCHGATE_ followed by the flag's
// name in upper case with dashes as underscores (--data-dir is WATCHGATE_DATA_DIR). A flag given
// on the command line wins over the environment. Only this command reads the environment; the
// libraries take Options.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/watchgate/watchgate/bench"
)

// command is one subcommand: it registers its flags, then runs with their values.
type command interface {
	// register adds the command's flags to fs.
	register(fs *flag.FlagSet)
	// run runs the command until ctx ends (SIGINT or SIGTERM) or it fails. It may print to
	// stdout; logs go to stderr.
	run(ctx context.Context, stdout, stderr io.Writer) error
}

// subcommand describes a command for dispatch and help.
type subcommand struct {
	name, summary, description string
	newCmd                     func() command
}

var subcommands = []subcommand{
	{"dev", "run everything in one process: embedded etcd, NATS JetStream, ingest and a gateway", devDescription, func() command { return &devCmd{} }},
	{"ingest", "run one ingest worker: tail an etcd cluster into the event log", ingestDescription, func() command { return &ingestCmd{} }},
	{"gateway", "run one gateway replica: serve etcd's gRPC API from the event log", gatewayDescription, func() command { return &gatewayCmd{} }},
	{"bench", "measure a scenario on etcd, etcd's gRPC proxy and watchgate, side by side", benchDescription, func() command { return &benchCmd{} }},
}

// positional is a command that takes a leading positional argument (bench's scenario) before
// its flags, which may depend on it.
type positional interface {
	// takeArgs consumes the leading arguments it understands and returns the rest.
	takeArgs(args []string) ([]string, error)
	// usageName is what follows the command's name in its usage line.
	usageName() string
}

func main() {
	bench.ServeIfChild() // `watchgate bench` runs each server it measures as a child of itself
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal starts a clean shutdown, a second one kills the process.
		<-ctx.Done()
		stop()
	}()
	os.Exit(runMain(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr))
}

// runMain dispatches args to a subcommand and returns the process exit code: 0 on success or
// help, 1 on any error (reported on stderr).
func runMain(ctx context.Context, args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printCommands(stderr)
		return 1
	}
	name, args := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(args) == 0 {
			printCommands(stdout)
			return 0
		}
		// "watchgate help dev" is "watchgate dev --help".
		name, args = args[0], []string{"--help"}
	}
	sc, ok := findCommand(name)
	if !ok {
		fmt.Fprintf(stderr, "watchgate: unknown command %q\n\n", name)
		printCommands(stderr)
		return 1
	}

	cmd := sc.newCmd()
	usageName := sc.name
	if p, ok := cmd.(positional); ok {
		var err error
		if args, err = p.takeArgs(args); err != nil {
			fmt.Fprintf(stderr, "watchgate %s: %v\n", sc.name, err)
			return 1
		}
		usageName += " " + p.usageName()
	}
	fs := flag.NewFlagSet("watchgate "+sc.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cmd.register(fs)
	fs.Usage = func() {} // help is printed below, to stdout; errors get a pointer to it
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			printUsage(fs, usageName, sc.description)
			return 0
		}
		// flag has printed the error.
		fmt.Fprintf(stderr, "Run 'watchgate %s --help' for usage.\n", sc.name)
		return 1
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "watchgate %s: unexpected arguments %q (see watchgate %s --help)\n", sc.name, fs.Args(), sc.name)
		return 1
	}
	if err := applyEnv(fs, envPrefix, lookupEnv); err != nil {
		fmt.Fprintf(stderr, "watchgate %s: %v\n", sc.name, err)
		return 1
	}
	if err := cmd.run(ctx, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "watchgate %s: %v\n", sc.name, err)
		return 1
	}
	return 0
}

func findCommand(name string) (subcommand, bool) {
	for _, sc := range subcommands {
		if sc.name == name {
			return sc, true
		}
	}
	return subcommand{}, false
}

func printCommands(w io.Writer) {
	fmt.Fprintf(w, "watchgate: an etcd v3 watch fan-out gateway backed by a NATS JetStream event log.\n\n")
	fmt.Fprintf(w, "Usage: watchgate <command> [flags]\n\nCommands:\n")
	for _, sc := range subcommands {
		fmt.Fprintf(w, "  %-9s %s\n", sc.name, sc.summary)
	}
	fmt.Fprintf(w, "  %-9s %s\n", "help", "show this list, or a command's flags (watchgate help <command>)")
	fmt.Fprintf(w, "\nStart with `watchgate dev`; `watchgate <command> --help` lists its flags.\n")
}
