# A client VM pushes to and substitutes from a larder VM configured by
# services.larder (flake.nix: checks.x86_64-linux.vm).
{ module }:
{
  name = "larder";

  nodes = {
    cache = { ... }: {
      imports = [ module ];
      services.larder = {
        enable = true;
        openFirewall = true;
        settings = {
          caches = [{ name = "default"; }];
          tokens = [{
            sub = "ci";
            validity = "1d";
            file = "tokens/ci.token";
            pull = [ "default" ];
            push = [ "default" ];
          }];
        };
      };
    };

    client = { lib, ... }: {
      nix.settings = {
        experimental-features = [ "nix-command" ];
        substituters = lib.mkForce [ ];
      };
    };
  };

  testScript = ''
    import json

    start_all()
    cache.wait_for_unit("larder.service")
    cache.wait_for_open_port(8080)

    token = cache.succeed("cat /var/lib/larder/tokens/ci.token").strip()
    info = json.loads(cache.succeed("larder-admin cache info default --json"))
    key = info["public_key"]

    client.wait_for_unit("multi-user.target")
    client.succeed(f"echo 'machine cache password {token}' > /root/netrc")
    path = client.succeed(
        "nix-build --no-out-link -E 'derivation { name = \"pushed\"; "
        "system = builtins.currentSystem; builder = \"/bin/sh\"; "
        "args = [ \"-c\" \"echo larder > $out\" ]; }'"
    ).strip()

    client.succeed(
        "nix copy --to 'http://cache:8080/default?compression=zstd' "
        f"--option netrc-file /root/netrc {path}"
    )
    client.succeed(f"nix-store --delete {path}")
    client.fail(f"test -e {path}")
    client.succeed(
        f"nix-store -r {path} --option substituters http://cache:8080/default "
        f"--option trusted-public-keys '{key}' --option netrc-file /root/netrc"
    )
    client.succeed(f"grep -q larder {path}")

    # The data survives a restart of the service.
    cache.systemctl("restart larder.service")
    cache.wait_for_open_port(8080)
    client.succeed(f"nix-store --delete {path}")
    client.succeed(
        f"nix-store -r {path} --option substituters http://cache:8080/default "
        f"--option trusted-public-keys '{key}' --option netrc-file /root/netrc"
    )
  '';
}
