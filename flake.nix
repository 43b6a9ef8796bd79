{
  description = "larder: a complete private Nix binary cache in one binary";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs = { self, nixpkgs }:
    let
      system = "x86_64-linux";
      pkgs = nixpkgs.legacyPackages.${system};
      images = self.nixosConfigurations.appliance.config.system.build.images;
    in
    {
      packages.${system} = {
        default = pkgs.callPackage ./nixos-image/package.nix { };
        # `nix build .#appliance-qcow2`: the appliance as a disk image (UEFI).
        appliance-qcow2 = images.qemu-efi;
        appliance-raw-efi = images.raw-efi;
        appliance-iso = images.iso;
      };

      nixosModules.default = { pkgs, ... }: {
        imports = [ ./nixos-image/module.nix ];
        services.larder.package = nixpkgs.lib.mkDefault
          self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };

      nixosConfigurations.appliance = nixpkgs.lib.nixosSystem {
        modules = [
          self.nixosModules.default
          ./nixos-image/configuration.nix
          { nixpkgs.hostPlatform = system; }
        ];
      };

      checks.${system} = {
        package = self.packages.${system}.default;
        vm = pkgs.testers.runNixOSTest (import ./nixos-image/vm-test.nix {
          module = self.nixosModules.default;
        });
      };
    };
}
