package server

import (
	_ "embed"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/reflection"
	reflectionv1grpc "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alphagrpc "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// apiDescriptors is `buf build` output for api/: the poold.v1 files and their
// imports, with source info. Generated Go code drops comments from its
// embedded descriptors, so reflection serves these instead and `grpcurl
// describe` shows operators the contract's documentation.
//
//go:embed apidescriptors.binpb
var apiDescriptors []byte

// documentedFiles resolves the poold.v1 files from apiDescriptors and
// everything else (health, reflection) from the generated registry.
type documentedFiles struct {
	files *protoregistry.Files
}

func newDocumentedFiles() (*documentedFiles, error) {
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(apiDescriptors, &set); err != nil {
		return nil, fmt.Errorf("server: decoding API descriptors: %w", err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		return nil, fmt.Errorf("server: building API descriptors: %w", err)
	}
	return &documentedFiles{files: files}, nil
}

func (d *documentedFiles) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	if fd, err := d.files.FindFileByPath(path); err == nil {
		return fd, nil
	}
	return protoregistry.GlobalFiles.FindFileByPath(path)
}

func (d *documentedFiles) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	if desc, err := d.files.FindDescriptorByName(name); err == nil {
		return desc, nil
	}
	return protoregistry.GlobalFiles.FindDescriptorByName(name)
}

// registerReflection serves both reflection versions, so every grpcurl
// release works.
func registerReflection(s *grpc.Server) error {
	files, err := newDocumentedFiles()
	if err != nil {
		return err
	}
	opts := reflection.ServerOptions{Services: s, DescriptorResolver: files}
	reflectionv1grpc.RegisterServerReflectionServer(s, reflection.NewServerV1(opts))
	reflectionv1alphagrpc.RegisterServerReflectionServer(s, reflection.NewServer(opts))
	return nil
}
